"""Checks of the sharded seed axis that need several devices, run in a process of their own.

``python tools/device_check.py devices MODEL [sweep]`` (started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs a small pure function and a tiny continual-learning run
(``make_run``; ``MODEL`` is ``linear``, a linear policy that compiles fast, or ``crossmodal``, the real agent) for
one seed per device on every device, on one device and with plain ``jax.vmap``, twice, and prints one JSON object
with the largest differences, whether reruns are bitwise equal, and the sharding of the results; ``sweep`` adds a
penalty-strength sweep split over the devices.

``python tools/device_check.py distributed PROCESS_ID NUM_PROCESSES PORT [run]`` joins a ``jax.distributed`` job
on ``localhost:PORT`` (each process with two CPU devices), runs the same pure function (and with ``run`` the tiny
run) with the seeds split over the devices of every process, gathers the results and prints them as JSON with a
reference computed in this process alone.

tests/test_sharding.py starts these processes and asserts on what they print.
"""
import dataclasses
import json
import os
import sys

MODE = sys.argv[1]
if MODE == "distributed":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[4]}", num_processes=int(sys.argv[3]),
                               process_id=int(sys.argv[2]), initialization_timeout=120)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)  # as in tests/conftest.py: compile time halves

from clloop_jax.envs import LatentWorld  # noqa: E402
from clloop_jax.model import CrossModalModel  # noqa: E402
from clloop_jax.run.config import RunConfig  # noqa: E402
from clloop_jax.run.sequential import make_run  # noqa: E402
from clloop_jax.sources.world import EnvSource  # noqa: E402
from clloop_jax.workflow.sharding import format_sharding, gather, shard_seeds, sharded_vmap, sharding_info  # noqa: E402


def pure(key, scale):
    """A small pure function of a key: a random walk, its running maximum and a reduction."""
    steps = jax.random.normal(key, (32,))
    walk = jnp.cumsum(scale * steps)
    return {"walk": walk, "max": jnp.max(walk), "mean_sq": jnp.mean(walk ** 2)}


@dataclasses.dataclass(frozen=True)
class LinearPolicy:
    """``action = [obs, feedback] @ w + b``: the model interface the sources use, compiled in a fraction of the
    time of the real agent (as in tests/test_loop.py)."""

    num_modalities: int
    observation_dim: int
    output_dim: int
    feedback_dim: int

    @property
    def modality_dims(self):
        return (self.observation_dim,) * self.num_modalities

    def init_params(self, key):
        w = 0.01 * jax.random.normal(key, (self.num_modalities * self.observation_dim + self.feedback_dim,
                                           self.output_dim))
        return {"params": {"w": w, "b": jnp.zeros((self.output_dim,))}}

    def initial_carry(self, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (1,), jnp.float32)

    def sequence(self, params, carry, obs, feedback):
        x = jnp.concatenate([obs.reshape(obs.shape[:-2] + (-1,)), feedback], axis=-1)
        return carry, x @ params["params"]["w"] + params["params"]["b"]

    def apply(self, params, carry, obs, feedback, method=None):
        return (method or self.sequence)(params, carry, obs, feedback)


def tiny_run(kind="linear"):
    env = LatentWorld(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=4)
    if kind == "linear":
        model = LinearPolicy(num_modalities=2, observation_dim=8, output_dim=8, feedback_dim=env.feedback_dim)
    else:
        model = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=8, num_modalities=2, num_heads=2,
                                feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=2, num_envs=4, eval_envs=4)
    # ewc_budget with no dual step keeps lambda constant and records it in the traces (the sweep checks it).
    run = make_run(RunConfig(strategy="ewc_budget", episodes_per_task=3,
                             monitors=("parameter", "fisher", "functional")), source)
    return run, run.hparams(learning_rate=1e-2, lam=10.0, dual_lr=0.0)


def max_diff(a, b) -> float:
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.nanmax(np.abs(np.asarray(x, np.float64)
                                                                             - np.asarray(y, np.float64)))), a, b))
    return max(diffs)


def bitwise(a, b) -> bool:
    # NaN marks episodes a monitor did not measure: equal where both are NaN.
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(
        np.asarray(x), np.asarray(y), equal_nan=np.issubdtype(np.asarray(x).dtype, np.floating))), a, b)))


def info(tree):
    return [{k: (v if k != "rows" else {str(d): list(r) for d, r in v.items()}) for k, v in i.items()}
            for i in sharding_info(tree)]


def devices_mode():
    report = {"device_count": jax.device_count(), "devices": [str(d) for d in jax.devices()]}
    n = jax.device_count()

    keys = jax.random.split(jax.random.key(0), 16)
    on_all = shard_seeds(pure, keys, 0.5)
    again = shard_seeds(pure, keys, 0.5)
    on_one = shard_seeds(pure, keys, 0.5, devices=1)
    plain = jax.vmap(pure, in_axes=(0, None))(keys, 0.5)
    padded = shard_seeds(pure, keys[:13], 0.5)
    report["pure"] = {
        "max_diff_all_vs_one": max_diff(on_all, on_one), "max_diff_all_vs_vmap": max_diff(on_all, plain),
        "rerun_bitwise": bitwise(on_all, again), "padded_max_diff": max_diff(padded, jax.tree.map(
            lambda x: x[:13], plain)), "padded_rows": int(padded["max"].shape[0]),
        "sharding": info(on_all), "text": format_sharding(on_all),
        "one_device_sharding": info(on_one)}

    run, hp = tiny_run(sys.argv[2])
    keys = jax.random.split(jax.random.key(1), n)
    _, res_all = shard_seeds(run, keys, hp)
    _, res_again = shard_seeds(run, keys, hp)
    _, res_one = shard_seeds(run, keys, hp, devices=1)
    _, res_vmap = jax.vmap(run, in_axes=(0, None))(keys, hp)
    report["run"] = {
        "max_diff_all_vs_one": max_diff(res_all, res_one), "max_diff_all_vs_vmap": max_diff(res_all, res_vmap),
        "max_diff_one_vs_vmap": max_diff(res_one, res_vmap),
        "rerun_bitwise": bitwise(res_all, res_again), "R_spread": float(np.ptp(np.asarray(res_all.R))),
        "sharding": info(res_all), "text": format_sharding(res_all),
        "one_device_sharding": info(res_one)}
    # The fast check covers the run-folder driver's option; the slow one (the real agent) also the facade's.
    report["option"] = execute_option_checks(run, hp) if sys.argv[2] == "linear" else facade_option_checks(run)
    if "sweep" not in sys.argv[3:]:
        print(json.dumps(report))
        return

    lambdas = jnp.linspace(0.0, 30.0, n)
    hp_sweep = hp.replace(lam=lambdas)
    sweep = sharded_vmap(run, in_axes=(None, hp_sweep.axes("lam")))
    _, swept = sweep(keys[0], hp_sweep)
    _, swept_vmap = jax.vmap(run, in_axes=(None, hp_sweep.axes("lam")))(keys[0], hp_sweep)
    report["sweep"] = {"max_diff_all_vs_vmap": max_diff(swept, swept_vmap),
                       "lambdas_in_traces": np.asarray(swept.traces["reg_lambda"][:, 1, 0]).tolist(),
                       "sharding_R": info(swept.R)}
    print(json.dumps(report))


def execute_option_checks(run, hp):
    """The device option of the run folder driver (``execute``, behind ``clloop run --devices``): 6 seeds (padded to
    8) on 8 devices against the default device, and a resumed run folder written on 8 devices."""
    import tempfile

    from clloop_jax.workflow.execute import execute
    from clloop_jax.workflow.runs import RunFolder

    seeds = list(range(6))
    with tempfile.TemporaryDirectory() as tmp:
        state8, ex8 = execute(run, hp, seeds, folder=RunFolder(os.path.join(tmp, "a")), devices=8)
        _, resumed = execute(run, hp, seeds, folder=RunFolder(os.path.join(tmp, "a"), resume=True), devices=8)
        written = np.loadtxt(os.path.join(tmp, "a", "R_seed5.csv"), delimiter=",", skiprows=2,
                             usecols=(1, 2))
    _, ex1 = execute(run, hp, seeds)
    return {"execute_max_diff_8_vs_default": max_diff(ex8, ex1), "execute_rows": int(ex8.R.shape[0]),
            "execute_resumed_bitwise": bitwise(ex8, resumed),
            "execute_written_R_max_diff": float(np.max(np.abs(written - np.asarray(ex8.R[5])))),
            "execute_state_sharding": info(state8.params)}


def facade_option_checks(run):
    """The device option of the facade (``cycle_over_seeds``, through ``Run.seeds``): 3 fresh agents on 8 devices
    against 1."""
    from clloop_jax.facade import ContinualLearningLoop

    loop = ContinualLearningLoop(run.source.model, run.source.env, learning_rate=1e-2, ewc_lambda=10.0,
                                 num_envs=4)
    on8 = loop.cycle_over_seeds(seeds=3, num_tasks=2, episodes_per_task=3, devices=8)
    on1 = loop.cycle_over_seeds(seeds=3, num_tasks=2, episodes_per_task=3, devices=1)
    return {"facade_max_diff_8_vs_1": max(abs(a - b) for a, b in zip(np.ravel(on8["R"]), np.ravel(on1["R"]))),
            "facade_seed_values": on8["average_performance"]["values"]}


def distributed_mode():
    report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
    keys = jax.random.split(jax.random.key(0), 8)
    out = shard_seeds(pure, keys, 0.5)
    local = jax.vmap(pure, in_axes=(0, None))(keys, 0.5)
    report["pure_max_diff_vs_local_vmap"] = max_diff(gather(out), local)
    report["pure_addressable_rows"] = sorted(
        [int(s.index[0].start or 0), int(s.index[0].stop)] for s in out["walk"].addressable_shards)
    report["pure_gathered"] = np.asarray(gather(out)["max"]).tolist()
    if "run" not in sys.argv[5:]:
        print(json.dumps(report))
        return
    run, hp = tiny_run("linear")
    keys = jax.random.split(jax.random.key(1), jax.device_count())
    _, res = shard_seeds(run, keys, hp)
    _, res_local = jax.vmap(run, in_axes=(0, None))(keys, hp)
    report["run_max_diff_vs_local_vmap"] = max_diff(gather(res), res_local)
    report["run_R"] = np.asarray(gather(res).R).tolist()
    report["sharding_R"] = format_sharding(res.R)
    print(json.dumps(report))


if __name__ == "__main__":
    devices_mode() if MODE == "devices" else distributed_mode()
