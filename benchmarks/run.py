"""The benchmark suite: one table and one JSON with every speed figure of the library, measured side by side.

    python -m benchmarks                       # the full suite, a few minutes on a 2-core CPU
    python -m benchmarks --quick               # small sizes and one repeat (CI runs this; no time is asserted)
    python -m benchmarks --only world,fisher   # some sections

Every time is the median of ``--repeats`` calls of an ahead-of-time compiled program (``jax.jit(f).lower(...)
.compile()``), after one warm-up call, with ``block_until_ready``; compile time (lower + compile) is reported
separately. Sections:

* ``peak``: a float32 matrix product (2048 x 2048) under ``jit``: the machine's own reference GFLOP/s.
* ``world``: the default world (two 64-d views of an 8-d latent, 32-d actions, 40-step episodes) with its expert as
  the policy, 1000-step rollouts at 1, 32 and 256 worlds, next to the *random-number bound*: the same rollout's
  standard normals drawn and summed with no world around them (the fastest of one call for the whole rollout, one
  call per step, and one call per chunk of steps as the rollout draws them), so ``of bound`` is the share of the
  achievable rate reached; and the floor under a world's step on this machine: what one small XLA operation costs in a
  compiled loop (the step time of a scan over chains of dependent 32 x 8 products and tanh, per operation).
* ``closed_loop``: ``CrossModalModel`` at the seed's sizes (hidden 128, 4 heads, two 64-d modalities, 33-d feedback,
  32-d actions) acting in the world, at 1, 32 and 256 worlds, next to the model's ``sequence`` alone on the same
  number of steps; FLOPs counted by XLA (``compiled.cost_analysis()``), achieved GFLOP/s against the ``peak``
  product timed in turn with them (so a change of the machine's load reaches both alike), and the
  model's share of the closed-loop step time.
* ``update``: one training update of the closed loop (a rollout of 8 worlds x 40 steps, the gradient through the
  model's sequence, EWC's penalty, Adam).
* ``fisher``: per-sample Fisher diagonals of the default model (hidden 64) on 64 sequences of 40 steps, as ratios to
  one batch gradient: empirical (vmap and chunked), sampled, each by the per-sample and the per-layer method.
* ``run``: the whole 3-task EWC run end to end (compile and run), and 1, 4 and 16 seeds under ``jax.vmap``.

Writes ``benchmarks/results/benchmarks.json`` (``--out``), with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.envs import LatentWorld, expert_policy, rollout
from clloop_jax.envs.rollout import _chunk_steps
from clloop_jax.importance import fisher as F
from clloop_jax.model import CrossModalModel
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.world import EnvSource
from clloop_jax.workflow.files import write_atomic

SECTIONS = ("peak", "world", "closed_loop", "update", "fisher", "run")
#: The sizes of the full suite, and of ``--quick`` (a smoke run of every section: tiny sizes, one size each).
FULL = dict(matmul=2048, world_steps=1000, worlds=(1, 32, 256), loop_steps=200, hidden=128, heads=4, episode=40,
            fisher_T=40, fisher_N=64, fisher_hidden=64, fisher_variants=("empirical", "empirical_chunked", "sampled"),
            run_hidden=64, episodes=20, seeds=(1, 4, 16))
QUICK = dict(matmul=256, world_steps=20, worlds=(4,), loop_steps=5, hidden=16, heads=2, episode=5,
             fisher_T=4, fisher_N=8, fisher_hidden=16, fisher_variants=("empirical",), run_hidden=16, episodes=1,
             seeds=())
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def xla_flops(fn: Callable, *args) -> float:
    """XLA's FLOP count of ``jit(fn)(*args)`` (``cost_analysis``). A loop's body is counted once, so count a single
    step, not a scan over steps."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


class Timed:
    """``fn`` compiled ahead of time on ``args``: its compile time and its median run time (``repeats=0`` leaves
    the timing to :func:`interleaved`)."""

    def __init__(self, fn: Callable, *args, repeats: int):
        t0 = time.perf_counter()
        self.compiled = jax.jit(fn).lower(*args).compile()
        self.args = args
        self.compile_s = time.perf_counter() - t0
        jax.block_until_ready(self.compiled(*args))  # warm-up
        self.all_seconds: List[float] = []
        for _ in range(repeats):
            self.time_once()

    def time_once(self) -> None:
        t0 = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        self.all_seconds.append(time.perf_counter() - t0)

    @property
    def seconds(self) -> float:
        return statistics.median(self.all_seconds)


def interleaved(timed: Dict[str, Timed], repeats: int) -> Dict[str, Timed]:
    """Times the programs round-robin, so that a change of the machine's load reaches every one of them alike."""
    for _ in range(repeats):
        for t in timed.values():
            t.time_once()
    return timed


def _cpu() -> dict:
    """The CPU's model name and widest vector instructions as Linux reports them, so that runs on different hosts can
    be told apart (the 2048 x 2048 product on 2-core machines here read 190-209 GFLOP/s on one day, 212-398 on
    another)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except OSError:
        return {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    widest = next((isa for isa in ("avx512f", "avx2", "avx", "sse2") if isa in flags), "")
    return {"cpu_model": info.get("model name", ""), "vector_isa": widest}


def machine() -> dict:
    import flax
    import optax
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            **_cpu(),
            "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------


def _matmul(size: dict) -> Timed:
    n = size["matmul"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    return Timed(jnp.matmul, a, b, repeats=0)


def _gflops(matmul: Timed) -> float:
    return 2 * matmul.args[0].shape[0] ** 3 / matmul.seconds / 1e9


def bench_peak(size: dict, repeats: int) -> dict:
    t = interleaved({"matmul": _matmul(size)}, repeats)["matmul"]
    return {"n": size["matmul"], "seconds": t.seconds, "gflops": _gflops(t)}


def _world_rate(env, params, policy, carry, steps: int, n: int) -> Timed:
    def fn(key):
        traj = rollout(key, env, params, policy, carry, steps, num_envs=n)
        return jnp.sum(traj.obs) + jnp.sum(traj.action) + jnp.sum(traj.target) + jnp.sum(traj.reward)
    return Timed(fn, jax.random.key(0), repeats=0)


def _noise_bound(noise_dim: int, steps: int, n: int) -> Dict[str, Timed]:
    """The rollout's standard normals alone, drawn three ways: in one call for all steps, one call per step in a scan,
    and in the rollout's own chunks of steps (one call per chunk, each step's from ``fold_in(key, t)``)."""
    def one_call(key):
        return jnp.sum(jax.random.normal(key, (steps, n, noise_dim), jnp.float32))

    def draw(key, t):
        return jax.random.normal(jax.random.fold_in(key, t), (n, noise_dim), jnp.float32)

    def per_step(key):
        return jax.lax.scan(lambda acc, t: (acc + jnp.sum(draw(key, t)), None), jnp.float32(0), jnp.arange(steps))[0]

    def chunked(key):
        per = _chunk_steps(steps, n * noise_dim)
        times = jnp.arange(steps).reshape(steps // per, per)
        return jax.lax.scan(lambda acc, ts: (acc + jnp.sum(jax.vmap(lambda t: draw(key, t))(ts)), None),
                            jnp.float32(0), times)[0]

    return {name: Timed(f, jax.random.key(1), repeats=0) for name, f in (("one_call", one_call),
                                                                          ("per_step", per_step),
                                                                          ("chunked", chunked))}


_DRAWS = ("one_call", "per_step", "chunked")

#: The floor's chains: this many (small product, tanh) pairs one after another in each step of a scan, on this many
#: rows (a batch of worlds' 8-d latents).
_FLOOR_PAIRS = (1, 16)
_FLOOR_ROWS = 32


def _op_chain(pairs: int, steps: int) -> Timed:
    """A scan whose step is ``pairs`` dependent (rows x 8 by 8 x 8 product, tanh) pairs: two XLA operations each, too
    small for their arithmetic to matter, so the time per step grows by what the backend costs per operation."""
    w = 0.5 * jnp.eye(8, dtype=jnp.float32)

    def fn(x):
        def body(x, _):
            for _ in range(pairs):
                x = jnp.tanh(x @ w)
            return x, None
        return jax.lax.scan(body, x, None, length=steps)[0]
    return Timed(fn, jnp.ones((_FLOOR_ROWS, 8), jnp.float32), repeats=0)


def bench_op_floor(steps: int, repeats: int) -> dict:
    """The cost of one small XLA operation in a compiled loop on this machine: the slope of the step time over the
    number of dependent operations per step (each operation of a world's step costs at least this)."""
    timed = interleaved({k: _op_chain(k, steps) for k in _FLOOR_PAIRS}, repeats)
    lo, hi = min(_FLOOR_PAIRS), max(_FLOOR_PAIRS)
    us = {k: 1e6 * timed[k].seconds / steps for k in _FLOOR_PAIRS}
    return {"rows": _FLOOR_ROWS, "us_per_step_by_pairs": us, "us_per_op": (us[hi] - us[lo]) / (2 * (hi - lo))}


def bench_world(size: dict, repeats: int) -> dict:
    env = LatentWorld()
    params = env.task_params(0)
    steps = size["world_steps"]
    out = {"steps": steps, "noise_dim": env.noise_dim, "worlds": {}}
    for n in size["worlds"]:
        timed = interleaved({"world": _world_rate(env, params, expert_policy(env), (), steps, n),
                             **_noise_bound(env.noise_dim, steps, n)}, repeats)
        rate = steps * n / timed["world"].seconds
        bound = steps * n / min(timed[k].seconds for k in _DRAWS)
        out["worlds"][n] = {"us_per_step": 1e6 * timed["world"].seconds / steps, "steps_per_s": rate,
                            "bound_steps_per_s": bound, "of_bound": rate / bound,
                            "bound_normals_per_s": bound * env.noise_dim,
                            "bound_by_method_s": {k: timed[k].seconds for k in _DRAWS},
                            "compile_s": timed["world"].compile_s}
    out["op_floor"] = bench_op_floor(steps, repeats)
    return out


def seed_model(env, size: dict, hidden: int = None) -> CrossModalModel:
    """The seed's sizes (full suite): hidden 128, 4 heads, the world's two 64-d views, 33-d feedback, 32-d actions."""
    return CrossModalModel(input_dim=env.observation_dim, hidden_dim=hidden or size["hidden"],
                           output_dim=env.action_dim, num_modalities=env.num_modalities, num_heads=size["heads"],
                           feedback_dim=env.feedback_dim)


def bench_closed_loop(size: dict, repeats: int) -> dict:
    env = LatentWorld()
    params = env.task_params(0)
    model = seed_model(env, size)
    variables = model.init_params(jax.random.key(0))
    steps = size["loop_steps"]
    matmul = _matmul(size)
    out = {"steps": steps, "model": f"CrossModalModel(hidden {model.hidden_dim}, {model.num_heads} heads, 2x64 in, "
                                    f"fb 33, out 32)", "worlds": {}}

    def act(carry, obs, feedback, key):
        del key
        return model.apply(variables, carry, obs, feedback)

    def closed_loop_step(carry, state, obs, feedback, noise):
        """One step of every world: the model acts, the world answers (what the rollout's scan body does)."""
        carry, action = jax.vmap(act, in_axes=(0, 0, 0, None))(carry, obs, feedback, None)
        return jax.vmap(env.step_with_noise, in_axes=(0, 0, 0, None))(noise, state, action, params), carry

    for n in size["worlds"]:
        loop = _world_rate(env, params, act, model.initial_carry(), steps, n)
        rng = np.random.default_rng(n)
        obs = jnp.asarray(rng.standard_normal((steps, n, env.num_modalities, env.observation_dim)), jnp.float32)
        fb = jnp.asarray(rng.standard_normal((steps, n, env.feedback_dim)), jnp.float32)

        def model_only(v, o, f):
            _, y = model.apply(v, model.initial_carry((n,)), o, f, method=model.sequence)
            return jnp.sum(y)

        alone = Timed(model_only, variables, obs, fb, repeats=0)
        matmul.all_seconds.clear()  # the peak of this comparison: timed in turn with the loop and the model
        interleaved({"loop": loop, "alone": alone, "matmul": matmul}, repeats)
        peak_gflops = _gflops(matmul)
        _, states = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(jax.random.key(3), n))
        step_flops = xla_flops(closed_loop_step, model.initial_carry((n,)), states, obs[0], fb[0],
                               jnp.zeros((n, env.noise_dim)))
        model_flops = xla_flops(lambda v, c, o, f: model.apply(v, c, o, f), variables, model.initial_carry((n,)),
                                obs[0], fb[0])
        gflops = step_flops * steps / loop.seconds / 1e9
        model_gflops = model_flops * steps / alone.seconds / 1e9
        out["worlds"][n] = {
            "us_per_step": 1e6 * loop.seconds / steps, "steps_per_s": steps * n / loop.seconds,
            "model_us_per_step": 1e6 * alone.seconds / steps, "model_share": alone.seconds / loop.seconds,
            "mflop_per_step": step_flops / 1e6, "model_mflop_per_step": model_flops / 1e6,
            "gflops": gflops, "of_peak": gflops / peak_gflops,
            "model_gflops": model_gflops, "model_of_peak": model_gflops / peak_gflops, "peak_gflops": peak_gflops,
            "compile_s": loop.compile_s}
    return out


def bench_update(size: dict, repeats: int) -> dict:
    env = LatentWorld(episode_length=size["episode"])
    source = EnvSource(seed_model(env, size), env, num_tasks=2, num_envs=8)
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=1, monitors=()), source)
    hp = run.hparams(lam=1.0)
    state = run.init(jax.random.key(0), hp)
    task = jax.tree.map(lambda x: x[0], source.tasks)

    def update(state, key):
        batch = source.batch(key, state.params, task, hp.source)
        return run.update(state, batch, key, hp)

    t = Timed(update, state, jax.random.key(1), repeats=repeats)
    steps = env.episode_length * source.num_envs
    return {"seconds": t.seconds, "compile_s": t.compile_s, "env_steps": steps, "env_steps_per_s": steps / t.seconds}


def bench_fisher(size: dict, repeats: int) -> dict:
    T, N = size["fisher_T"], size["fisher_N"]
    model = CrossModalModel(input_dim=64, hidden_dim=size["fisher_hidden"], output_dim=32, num_modalities=2,
                            num_heads=size["heads"], feedback_dim=33)
    params = model.init_params(jax.random.key(0))
    carry0 = model.initial_carry(())

    def apply_fn(p, x):
        obs, fb = x
        return model.apply(p, carry0, obs, fb, method=model.sequence)[1]

    k_obs, k_fb, k_y = jax.random.split(jax.random.key(1), 3)
    x = (jax.random.normal(k_obs, (N, T, 2, 64)), jax.random.normal(k_fb, (N, T, 33)))
    y = jax.random.normal(k_y, (N, T, 32))
    lik = F.Gaussian(sigma=1.0)
    key = jax.random.key(2)
    methods = {"batch_gradient": lambda p, x, y, k: F.squared_batch_gradient(apply_fn, p, x, y, likelihood=lik)}
    for method in ("per_sample", "per_layer"):
        for name, variant, chunk in (("empirical", "empirical", None), ("empirical_chunked", "empirical", N // 4),
                                     ("sampled", "sampled", None)):
            if name not in size["fisher_variants"]:
                continue
            methods[f"{name} {method}"] = (lambda v, c, m: lambda p, x, y, k: F.fisher_diagonal(
                apply_fn, p, x, y, likelihood=lik, variant=v, key=k, chunk_size=c, method=m))(variant, chunk, method)
    timed = interleaved({name: Timed(f, params, x, y, key, repeats=0) for name, f in methods.items()}, repeats)
    base = timed["batch_gradient"].seconds
    return {"T": T, "N": N, "chunk_size": N // 4, "methods": {name: {"seconds": t.seconds, "x_batch_gradient": t.seconds / base,
                                               "compile_s": t.compile_s} for name, t in timed.items()}}


def bench_run(size: dict, repeats: int) -> dict:
    env = LatentWorld(episode_length=size["episode"])
    source = EnvSource(seed_model(env, size, hidden=size["run_hidden"]), env, num_tasks=3, num_envs=8)
    episodes = size["episodes"]
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=episodes), source)
    hp = run.hparams(lam=3.0, feedback_weight=0.3)
    one = Timed(run, jax.random.key(0), hp, repeats=max(1, repeats // 2))
    env_steps = 3 * episodes * source.num_envs * env.episode_length
    out = {"tasks": 3, "episodes_per_task": episodes, "seconds": one.seconds, "compile_s": one.compile_s,
           "train_env_steps_per_s": env_steps / one.seconds, "seeds": {}}
    for s in size["seeds"]:
        keys = jax.random.split(jax.random.key(1), s)
        t = Timed(jax.vmap(run, in_axes=(0, None)), keys, hp, repeats=max(1, repeats // 2))
        out["seeds"][s] = {"seconds": t.seconds, "seconds_per_seed": t.seconds / s, "compile_s": t.compile_s}
    return out


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------


def table(res: dict) -> str:
    rows: List[str] = ["| measurement | value | compared with | ratio |", "|---|---:|---|---:|"]
    if "peak" in res:
        p = res["peak"]
        rows.append(f"| matrix product {p['n']}x{p['n']} float32 | {p['gflops']:.1f} GFLOP/s | | |")
    if "world" in res:
        for n, w in res["world"]["worlds"].items():
            rows.append(f"| world, expert policy, {n} world(s) | {w['steps_per_s'] / 1e6:.3f} M steps/s "
                        f"({w['us_per_step']:.1f} us/step) | random-number bound {w['bound_steps_per_s'] / 1e6:.3f}"
                        f" M steps/s | {w['of_bound']:.2f} |")
        f = res["world"]["op_floor"]
        rows.append(f"| one small XLA operation in a compiled loop ({f['rows']} x 8 product or tanh, one after "
                    f"another) | {f['us_per_op']:.2f} us | | |")
    if "closed_loop" in res:
        for n, c in res["closed_loop"]["worlds"].items():
            rows.append(f"| closed loop, seed-size model, {n} world(s) | {c['us_per_step']:.1f} us/step, "
                        f"{c['gflops']:.1f} GFLOP/s ({c['mflop_per_step']:.2f} MFLOP/step) | matrix product timed in turn, "
                        f"{c['peak_gflops']:.1f} GFLOP/s | {c['of_peak']:.2f} |")
            rows.append(f"| model alone, {n} world(s) | {c['model_us_per_step']:.1f} us/step, "
                        f"{c['model_gflops']:.1f} GFLOP/s | closed-loop step (model share) | "
                        f"{c['model_share']:.2f} |")
    if "update" in res:
        u = res["update"]
        rows.append(f"| one training update (rollout 8 x {u['env_steps'] // 8} + EWC gradient + Adam) | "
                    f"{1e3 * u['seconds']:.2f} ms | compile {u['compile_s']:.1f} s | |")
    if "fisher" in res:
        f = res["fisher"]
        base = f["methods"]["batch_gradient"]["seconds"]
        for name, m in f["methods"].items():
            if name != "batch_gradient":
                rows.append(f"| Fisher {name}, {f['N']} sequences x {f['T']} steps | {1e3 * m['seconds']:.1f} ms "
                            f"(compile {m['compile_s']:.1f} s) | batch gradient {1e3 * base:.1f} ms (compile "
                            f"{f['methods']['batch_gradient']['compile_s']:.1f} s) | {m['x_batch_gradient']:.2f} |")
    if "run" in res:
        r = res["run"]
        rows.append(f"| whole run, 3 tasks x {r['episodes_per_task']} episodes | {r['seconds']:.2f} s "
                    f"({r['train_env_steps_per_s'] / 1e3:.0f} k training steps/s) | compile {r['compile_s']:.1f} s"
                    f" | |")
        one = r["seeds"][min(r["seeds"])]["seconds_per_seed"] if r["seeds"] else None
        for s, v in r["seeds"].items():
            rows.append(f"| {s} seed(s) vmapped | {v['seconds']:.2f} s ({v['seconds_per_seed']:.3f} s/seed) | "
                        f"1 seed per seed | {one / v['seconds_per_seed']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> Dict[str, dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 5, quick 1)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", default=None, help="the JSON file (default benchmarks/results/benchmarks.json)")
    ap.add_argument("--worlds", default=None, help="comma-separated world counts of the world and closed_loop "
                    "sections (default 1,32,256; a GPU: 1,32,256,4096)")
    ap.add_argument("--seeds", default=None, help="comma-separated vmapped seed counts of the run section "
                    "(default 1,4,16)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown sections {unknown}; choose from {SECTIONS}")
    repeats = args.repeats or (1 if args.quick else 5)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    size = dict(QUICK if args.quick else FULL)
    for name in ("worlds", "seeds"):
        text = getattr(args, name)
        if text is not None:
            try:
                counts = tuple(int(v) for v in text.split(","))
            except ValueError:
                counts = ()
            if not counts or min(counts) < 1:
                ap.error(f"--{name}: expected comma-separated positive integers, got {text!r}")
            size[name] = counts
    res: Dict[str, dict] = {}
    started = time.perf_counter()
    if "peak" in only:
        res["peak"] = bench_peak(size, repeats)
    steps = {"world": lambda: bench_world(size, repeats),
             "closed_loop": lambda: bench_closed_loop(size, repeats),
             "update": lambda: bench_update(size, repeats),
             "fisher": lambda: bench_fisher(size, repeats),
             "run": lambda: bench_run(size, repeats)}
    for name in SECTIONS[1:]:
        if name in only:
            print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr, flush=True)
            res[name] = steps[name]()
    text = table(res)
    print(text)
    out = pathlib.Path(args.out) if args.out else RESULTS / ("benchmarks_quick.json" if args.quick
                                                             else "benchmarks.json")
    write_atomic(str(out), json.dumps({"machine": machine(), "quick": args.quick, "repeats": repeats,
                                  "sizes": size, "wall_s": time.perf_counter() - started, "results": res,
                                  "table": text},
                                 indent=1, default=float) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
