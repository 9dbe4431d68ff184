"""Seeds split over devices: 16 and 64 vmapped seeds of a tiny continual-learning run on 1 device and on every
device (8 simulated CPU devices by default), with :func:`clloop_jax.workflow.sharding.sharded_vmap`.

The run: ``Environment(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=8)``, a
``CrossModalModel`` (hidden 16, 2 heads), ``EnvSource(num_tasks=2, num_envs=4, eval_envs=4)``,
``RunConfig(strategy="ewc", episodes_per_task=3)``. For every seed count S and device count D:

* lower / compile: ``sharded.lower(keys, hp)`` and ``.compile()`` timed apart (one program per S and D);
* run: the median wall time of ``--repeats`` calls of the compiled, sharded program (``block_until_ready``),
  inputs placed on the devices included, and the time per seed;
* plain: the same S seeds through ``jax.jit(jax.vmap(run))`` on the default device, for reference;
* max diff: the largest difference of any result (``RunResults``: R, baseline, traces) between D devices and
  plain vmap (float32 rounding); ``max_diff_state`` is the same for the final train state. The state differs
  more: the attention's key bias has an exactly zero gradient (softmax ignores a shift shared by every key), so
  Adam turns its rounding noise into steps of about the learning rate, and that noise depends on how XLA
  batched the program. The key bias never changes an output.

On a CPU the simulated devices share the same cores, so more devices show the cost of splitting (communication,
smaller per-device batches), not a speed-up; on a machine with several accelerators the same command spreads the
seeds over them.

    python benchmarks/bench_devices.py                          # 16 and 64 seeds, 1 vs 8 simulated devices
    python benchmarks/bench_devices.py --seeds 16 --repeats 2   # quicker
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bench_devices.py   # another count

``XLA_FLAGS`` is set to 8 simulated CPU devices when it does not already force a device count (it must be set
before JAX starts). Writes ``benchmarks/results/bench_devices.json`` (atomically).
"""
from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from clloop_jax.envs import Environment  # noqa: E402
from clloop_jax.model import CrossModalModel  # noqa: E402
from clloop_jax.run.config import HParams, RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.world import EnvSource
from clloop_jax.workflow.sharding import sharded_vmap, sharding_info  # noqa: E402

WORLD = dict(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=8)


def build():
    env = Environment(**WORLD)
    model = CrossModalModel(input_dim=env.observation_dim, hidden_dim=16, output_dim=env.action_dim,
                            num_modalities=env.num_modalities, num_heads=2, feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=2, num_envs=4, eval_envs=4)
    return make_run(RunConfig(strategy="ewc", episodes_per_task=3), source)


def max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b)))


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=str, default="16,64", help="comma-separated seed counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "bench_devices.json")
    args = parser.parse_args()
    seed_counts = sorted({int(s) for s in args.seeds.split(",")})
    if args.repeats < 1 or not seed_counts or seed_counts[0] < 1:
        parser.error("--repeats and every --seeds entry must be >= 1")

    run = build()
    hp = HParams.create(learning_rate=1e-2, reg_lambda=10.0)
    all_devices = jax.device_count()
    device_counts = sorted({1, all_devices})
    print(f"backend={jax.default_backend()} devices={all_devices} ({jax.devices()[0].device_kind}) "
          f"jax={jax.__version__} cpus={os.cpu_count()}")
    print(f"world {WORLD}, CrossModalModel hidden 16, 2 tasks x 3 episodes, 4 envs; strategy ewc\n")
    print(f"{'seeds':>5} {'devices':>7} {'lower s':>8} {'compile s':>9} {'run s':>8} {'ms/seed':>8} "
          f"{'vs plain':>8} {'max diff':>9}")

    rows = []
    for S in seed_counts:
        keys = jax.random.split(jax.random.key(0), S)
        plain = jax.jit(jax.vmap(run, in_axes=(0, None)))
        t0 = time.perf_counter()
        plain_lowered = plain.lower(keys, hp)
        t1 = time.perf_counter()
        plain_compiled = plain_lowered.compile()
        t2 = time.perf_counter()
        reference = jax.block_until_ready(plain_compiled(keys, hp))
        plain_run, plain_times = median_time(lambda: plain_compiled(keys, hp), args.repeats)
        rows.append(dict(seeds=S, devices=1, mode="plain_vmap", lower_s=t1 - t0, compile_s=t2 - t1,
                         run_s=plain_run, run_times_s=plain_times, ms_per_seed=1e3 * plain_run / S,
                         max_diff_vs_plain=0.0, max_diff_state_vs_plain=0.0, sharding=None))
        print(f"{S:>5} {'plain':>7} {t1 - t0:>8.2f} {t2 - t1:>9.2f} {plain_run:>8.3f} "
              f"{1e3 * plain_run / S:>8.2f} {1.0:>8.2f} {0.0:>9.2g}")
        for D in device_counts:
            sharded = sharded_vmap(run, in_axes=(0, None), devices=D)
            t0 = time.perf_counter()
            lowered = sharded.lower(keys, hp)
            t1 = time.perf_counter()
            lowered.compile()
            t2 = time.perf_counter()
            out = jax.block_until_ready(sharded(keys, hp))  # warm-up; reuses the compiled program
            run_s, times = median_time(lambda: sharded(keys, hp), args.repeats)
            diff = max_diff(out[1], reference[1])
            diff_state = max_diff(out[0], reference[0])
            info = sharding_info(out[1].R)[0]
            rows.append(dict(seeds=S, devices=D, mode="sharded", lower_s=t1 - t0, compile_s=t2 - t1, run_s=run_s,
                             run_times_s=times, ms_per_seed=1e3 * run_s / S, max_diff_vs_plain=diff,
                             max_diff_state_vs_plain=diff_state,
                             sharding=dict(spec=info["spec"], num_devices=info["num_devices"],
                                           shard_shape=list(info["shard_shape"]))))
            print(f"{S:>5} {D:>7} {t1 - t0:>8.2f} {t2 - t1:>9.2f} {run_s:>8.3f} {1e3 * run_s / S:>8.2f} "
                  f"{run_s / plain_run:>8.2f} {diff:>9.2g}   R {info['spec']} shard {list(info['shard_shape'])}")

    result = dict(
        benchmark="bench_devices", world=WORLD, model=dict(hidden_dim=16, num_heads=2),
        source=dict(num_tasks=2, num_envs=4, eval_envs=4), config=dict(strategy="ewc", episodes_per_task=3),
        repeats=args.repeats, rows=rows,
        platform=dict(backend=jax.default_backend(), device_count=all_devices,
                      device_kind=jax.devices()[0].device_kind, jax=jax.__version__, python=platform.python_version(),
                      machine=platform.machine(), cpu_count=os.cpu_count(), xla_flags=os.environ.get("XLA_FLAGS")))
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
