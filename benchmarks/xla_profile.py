"""Where a compiled step spends its time: a per-operation profile from ``jax.profiler``, attributed to the source.

    python -m benchmarks.xla_profile                      # the closed loop at 32 worlds (the seed's model in the world)
    python -m benchmarks.xla_profile --worlds 1 --top 25  # another batch size, more rows
    python -m benchmarks.xla_profile --program world --steps 1000   # the world alone, with its expert

The program is compiled ahead of time, run once to warm up, then traced over ``--repeats`` calls with
``jax.profiler.trace``; the trace's XLA operations (fusions, matrix products, copies, loops) are reduced to their
*self* time (an operation's time less that of the operations nested in it), per step of the rollout. Each
operation is named with the source it came from (the ``op_name`` XLA keeps from JAX, e.g.
``CrossModalModel._step/encoder_0/add``) and its kind: ``dot`` (a matrix product), ``elementwise`` (a loop
fusion), ``rng`` (the threefry loop), ``copy`` (copies and dynamic-update-slices into the trajectory), ``control``
(loop bookkeeping). Writes ``benchmarks/results/profile_<program>_<worlds>.md`` with the table and the shares by
kind.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Dict, List

import jax
import jax.numpy as jnp

from benchmarks.run import FULL, RESULTS, seed_model, xla_flops
from clloop_jax.envs import LatentWorld, expert_policy, rollout
from clloop_jax.workflow.files import write_atomic

#: Trace events that are the runtime's own bookkeeping, not XLA operations of the program.
_RUNTIME = ("ThunkExecutor", "PjitFunction", "CommonPjRt", "end:", "$")


def op_sources(hlo_text: str) -> Dict[str, str]:
    """Each instruction of the optimised HLO mapped to the JAX source path XLA kept in its metadata."""
    sources = {}
    for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
        sources[m.group(1)] = m.group(2)
    return sources


def op_kind(name: str, source: str) -> str:
    """A coarse kind for an operation, from its name and source."""
    if name.startswith(("ynn_fusion", "xnn_fusion", "dot", "custom-call", "onednn")) or "dot_general" in source:
        return "dot"
    if any(word in source for word in ("threefry", "random_bits", "_normal", "erf_inv")):
        return "rng"
    if "dynamic-update-slice" in name or name.startswith(("copy", "transpose")):
        return "copy"
    if name.startswith(("while", "wrapped_compare", "wrapped_add", "call", "conditional")):
        return "control"
    return "elementwise"


def self_times(trace_events: List[dict]) -> Dict[str, List[float]]:
    """``{operation: [self microseconds, calls]}`` from complete ('X') trace events, thread by thread."""
    out: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0])
    threads = collections.defaultdict(list)
    for e in trace_events:
        if e.get("ph") == "X":
            threads[(e["pid"], e["tid"])].append(e)
    for events in threads.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: List[dict] = []
        for e in events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                out[stack[-1]["name"]][0] -= e["dur"]
            out[e["name"]][0] += e["dur"]
            out[e["name"]][1] += 1
            stack.append(e)
    return {k: v for k, v in out.items() if not k.startswith(_RUNTIME)}


def profile(compiled, args, steps: int, repeats: int) -> List[dict]:
    """Rows ``{op, kind, source, us_per_step, share, calls_per_step}`` for ``compiled(*args)``, largest first."""
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(repeats):
                jax.block_until_ready(compiled(*args))
        files = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))
        if not files:
            raise RuntimeError("jax.profiler wrote no trace (is the profiler plugin available?)")
        with gzip.open(files[-1]) as f:
            events = json.load(f)["traceEvents"]
    sources = op_sources(compiled.as_text())
    times = self_times(events)
    total = sum(t for t, _ in times.values())
    rows = [{"op": name, "kind": op_kind(name, sources.get(name, "")), "source": sources.get(name, ""),
             "us_per_step": t / repeats / steps, "share": t / total, "calls_per_step": n / repeats / steps}
            for name, (t, n) in times.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def program(name: str, worlds: int, steps: int):
    """``(fn, args, model FLOPs per step)`` of a rollout of the benchmark suite, ``steps`` steps of ``worlds`` worlds:
    ``closed_loop`` (the seed's model acting in the default world) or ``world`` (the world with its expert)."""
    env = LatentWorld()
    params = env.task_params(0)
    if name == "world":
        policy, carry, model_flops = expert_policy(env), (), 0.0
    else:
        model = seed_model(env, FULL)
        variables = model.init_params(jax.random.key(0))

        def policy(carry, obs, feedback, key):
            del key
            return model.apply(variables, carry, obs, feedback)

        carry = model.initial_carry()
        obs = jnp.zeros((worlds, env.num_modalities, env.observation_dim), jnp.float32)
        fb = jnp.zeros((worlds, env.feedback_dim), jnp.float32)
        model_flops = xla_flops(lambda c, o, f: model.apply(variables, c, o, f), model.initial_carry((worlds,)),
                                obs, fb)

    def fn(key):
        traj = rollout(key, env, params, policy, carry, steps, num_envs=worlds)
        return jnp.sum(traj.obs) + jnp.sum(traj.action) + jnp.sum(traj.target) + jnp.sum(traj.reward)

    return fn, (jax.random.key(0),), model_flops


def shares_by_kind(rows: List[dict]) -> Dict[str, float]:
    kinds: Dict[str, float] = collections.defaultdict(float)
    for r in rows:
        kinds[r["kind"]] += r["share"]
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


_TITLES = {"closed_loop": "the seed's model acting in the default world", "world": "the default world with its expert"}


_DEFAULT_TOP = 15


def markdown(rows: List[dict], name: str, worlds: int, steps: int, wall_us: float, model_flops: float,
             top: int) -> str:
    traced = sum(r["us_per_step"] for r in rows)
    lines = [f"# Profile of the {name.replace('_', ' ')} at {worlds} world(s)", "",
             f"`python -m benchmarks.xla_profile --program {name} --worlds {worlds} --steps {steps}"
             f"{'' if top == _DEFAULT_TOP else f' --top {top}'}`: "
             f"{_TITLES[name]}, {steps}-step rollouts, compiled ahead of time; self time per step of each XLA "
             f"operation from `jax.profiler` ({jax.default_backend()}, jax {jax.__version__}).", "",
             f"- wall time per step (untraced): {wall_us:.1f} us; XLA operations' self time in the trace: "
             f"{traced:.1f} us per step (operations on several threads add up)"]
    if model_flops:
        lines.append(f"- the model's FLOPs per step (XLA's count): {model_flops / 1e6:.2f} MFLOP, i.e. "
                     f"{model_flops / wall_us / 1e3:.1f} GFLOP/s at the untraced wall time")
    lines += ["", "| kind | share of traced time |", "|---|---:|"]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in shares_by_kind(rows).items()]
    lines += ["", "| operation | kind | us/step | share | calls/step | source |", "|---|---|---:|---:|---:|---|"]
    for r in rows[:top]:
        src = r["source"].split("/")[-3:]
        lines.append(f"| `{r['op']}` | {r['kind']} | {r['us_per_step']:.2f} | {100 * r['share']:.1f}% | "
                     f"{r['calls_per_step']:.2f} | `{'/'.join(src)}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> List[dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.xla_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--program", choices=tuple(_TITLES), default="closed_loop", help="what to profile")
    ap.add_argument("--worlds", type=int, default=32, help="worlds acting in parallel (default 32)")
    ap.add_argument("--steps", type=int, default=200, help="steps per rollout (default 200)")
    ap.add_argument("--repeats", type=int, default=3, help="traced calls (default 3)")
    ap.add_argument("--top", type=int, default=_DEFAULT_TOP, help=f"operations listed (default {_DEFAULT_TOP})")
    ap.add_argument("--out", default=None, help="the markdown file (default benchmarks/results/"
                                                "profile_<program>_<worlds>.md)")
    args = ap.parse_args(argv)
    for name in ("worlds", "steps", "repeats", "top"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    fn, fargs, model_flops = program(args.program, args.worlds, args.steps)
    compiled = jax.jit(fn).lower(*fargs).compile()
    jax.block_until_ready(compiled(*fargs))
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*fargs))
        walls.append(time.perf_counter() - t0)
    wall_us = 1e6 * sorted(walls)[len(walls) // 2] / args.steps
    rows = profile(compiled, fargs, args.steps, args.repeats)
    text = markdown(rows, args.program, args.worlds, args.steps, wall_us, model_flops, args.top)
    print(text)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"profile_{args.program}_{args.worlds}.md"
    write_atomic(str(out), text)
    print(f"wrote {out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
