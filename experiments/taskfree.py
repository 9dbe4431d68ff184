"""Task-free streams: the task changes without notice; the agent detects the change or needs no boundary at all.

Two streams, each over ``--seeds`` seeds (all seeds of a configuration in one compiled program):

* the closed-loop world (the default ``CrossModalModel`` imitating each task's expert in the default world, 3 tasks;
  score 1 = the expert, 0 = the zero action);
* a labelled stream: permuted digits, domain-incremental (one head, each task a fixed permutation of the 64 pixels;
  score = test accuracy).

Abrupt streams switch task at irregular, unannounced episodes (each seed its own switch times,
:func:`clloop_jax.taskfree.schedules.irregular_schedule`). Compared: EWC whose consolidations are triggered by the
Page-Hinkley detector on the training loss (``detect``), EWC consolidated at the true switches (``oracle``), and
fine-tuning. Detection is scored against the true switches (delay in episodes, missed switches, false alarms). Gradual
streams blend consecutive tasks linearly over ``blend`` episodes; compared: fine-tuning, the boundary-free streaming EWC
and streaming SI with one long memory for importance and anchor (``decay``), the same with a lagged anchor (the anchor's
memory ``anchor_decay = 1 - 1 / (m * blend)``, a horizon of ``m`` blends, while the importance keeps the long
memory; ``lam`` and ``m`` chosen by ``experiments/taskfree_tune.py`` on tuning seeds), and detect-triggered EWC. The
performance matrix is evaluated at the true boundaries; mean ± 95% Student t interval over seeds; paired differences use
the same seeds and streams::

    python experiments/taskfree.py                 # 5 seeds, both streams (about 10 minutes on 2 CPU cores)
    python experiments/taskfree.py --quick         # 2 seeds, short streams: a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from clloop_jax.data.loaders import load_dataset
from clloop_jax.data.streams import permuted_stream
from clloop_jax.envs import Environment
from clloop_jax.model import MLP, CrossModalModel
from clloop_jax.report import cell
from clloop_jax.run.config import RunConfig
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.sources.world import EnvSource
from clloop_jax.taskfree.detect import PageHinkley
from clloop_jax.taskfree.metrics import taskfree_summary
from clloop_jax.taskfree.run import make_taskfree_run
from clloop_jax.taskfree.schedules import gradual_schedule, irregular_schedule
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic

TASKS = 3


def world_source(args):
    env = Environment(observation_dim=64, action_dim=32, num_modalities=2, num_tasks=TASKS)
    model = CrossModalModel(input_dim=64, hidden_dim=64, output_dim=32, num_modalities=2,
                            feedback_dim=env.feedback_dim)
    return EnvSource(model, env, num_tasks=TASKS, num_envs=8)


def digits_source(args):
    x, y, xt, yt = load_dataset("digits")
    stream = permuted_stream(x, y, TASKS, seed=0, x_test=xt, y_test=yt, scenario="domain")
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(100, 100)), stream, batch_size=64,
                            fisher_size=64)


#: per stream: the source, episodes per segment, the run's settings, and each method's strength. EWC's strengths are
#: those of the known-boundary experiments (forgetting.py, scenarios.py); the streaming strategies' with one memory
#: were picked from {3, 30} (world) and {2, 5, 10, 20, 30, 100} (digits), decay 0.999, on gradual streams with other
#: seeds (``jax.random.key(100)``, 3 seeds), not the reported ones; ``lagged``: ``(lam, m, importance decay)`` of the
#: lagged-anchor variants (None: ``--decay``), chosen by ``experiments/taskfree_tune.py`` (results/taskfree_tune.md)
#: on those tuning seeds.
STREAMS = {
    "world": dict(source=world_source, episodes=100, config=dict(fisher_variant="sampled"),
                  hp=dict(learning_rate=1e-3, feedback_weight=0.3),
                  lam={"ewc": 3.0, "streaming_ewc": 3.0, "streaming_si": 30.0},
                  lagged={"streaming_ewc": (0.3, 1.0, None), "streaming_si": (100.0, 0.5, None)}),
    "digits": dict(source=digits_source, episodes=200,
                   config=dict(fisher_variant="exact", fisher_chunk_size=64, max_grad_norm=None),
                   hp=dict(learning_rate=1e-3),
                   lam={"ewc": 100.0, "streaming_ewc": 10.0, "streaming_si": 2.0},
                   lagged={"streaming_ewc": (10.0, 2.0, None), "streaming_si": (2.0, 1.0, None)}),
}

#: (strategy, boundaries, lagged anchor)
ABRUPT = (("ewc", "detect", False), ("ewc", "oracle", False), ("none", "none", False))
GRADUAL = (("none", "none", False), ("streaming_ewc", "none", False), ("streaming_si", "none", False),
           ("streaming_ewc", "none", True), ("streaming_si", "none", True), ("ewc", "detect", False))


def label(strategy, boundaries, lagged=False):
    if strategy == "none":
        return "fine-tuning"
    if strategy == "ewc":
        return f"{strategy} ({boundaries})"
    return f"{strategy}, lagged anchor" if lagged else strategy


def anchor_decay_for(m: float, blend: int) -> float:
    """``1 - 1 / (m * blend)``: an anchor horizon of ``m`` blends (one update per episode)."""
    return 1.0 - 1.0 / (m * blend)


def streaming_hparams(spec, strategy, decay, lagged, blend):
    """``lam``, ``decay`` and ``anchor_decay`` of a streaming strategy: one memory (``anchor_decay = decay``), or the
    lagged anchor's ``(lam, m, importance decay)`` of ``spec["lagged"]`` with ``anchor_decay = 1 - 1 / (m * blend)``
    (an importance decay of None: ``decay``)."""
    if not lagged:
        return {"lam": spec["lam"][strategy], "decay": decay, "anchor_decay": decay}
    lam, m, importance_decay = spec["lagged"][strategy]
    return {"lam": lam, "decay": decay if importance_decay is None else importance_decay,
            "anchor_decay": anchor_decay_for(m, blend)}


def run_cell(source, spec, strategy, boundaries, schedules, keys, decay, lagged=False, blend=None):
    run = make_taskfree_run(RunConfig(strategy=strategy, monitors=(), **spec["config"]), source,
                            boundaries=boundaries, detector=PageHinkley())
    if strategy.startswith("streaming_"):
        extra = streaming_hparams(spec, strategy, decay, lagged, blend)
    else:
        extra = {"lam": spec["lam"][strategy]} if strategy in spec["lam"] else {}
    hp = run.hparams(**spec["hp"], **extra)
    t0 = time.perf_counter()
    _, res = run.seeds(keys, hp, schedules)
    res = jax.tree.map(np.asarray, res)
    seconds = time.perf_counter() - t0
    s = taskfree_summary(res, schedules)
    finite = bool(np.all(res.traces["finite"]))
    return {"strategy": strategy, "boundaries": boundaries, "hparams": {k: float(v) for k, v in extra.items()},
            "R": np.asarray(res.R, np.float64), "baseline": np.asarray(res.baseline, np.float64),
            "average_performance": s["average_performance"], "backward_transfer": s["backward_transfer"],
            "mean_delay": s["mean_delay"], "delay": s["delay"], "missed": s["missed"],
            "false_alarms": s["false_alarms"], "consolidations": s["consolidations"],
            "finite": finite, "seconds": seconds}


def table(cells: dict, reference: str = "fine-tuning") -> str:
    lines = ["| method | ACC | BWT | ACC minus fine-tuning (paired) | detection delay (episodes) | missed | "
             "false alarms | consolidations |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ref = cells[reference]["average_performance"]
    for name, c in cells.items():
        gain = "-" if name == reference else cell(c["average_performance"] - ref)
        lines.append(f"| {name} | {cell(c['average_performance'])} | {cell(c['backward_transfer'])} | {gain} | "
                     f"{cell(c['mean_delay'], 1, False)} | {cell(c['missed'], 1, False)} | "
                     f"{cell(c['false_alarms'], 1, False)} | {cell(c['consolidations'], 1, False)} |")
    return "\n".join(lines)


def to_json(value):
    """JSON-ready values; a non-finite float (a missed switch's delay) becomes null."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return to_json(np.asarray(value).tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--streams", default="world,digits", help="comma-separated: world, digits")
    p.add_argument("--kinds", default="abrupt,gradual", help="comma-separated: abrupt, gradual")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every stream's episodes per segment")
    p.add_argument("--decay", type=float, default=0.999, help="memory of the streaming strategies")
    p.add_argument("--quick", action="store_true", help="2 seeds, half the episodes")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "taskfree"),
                   help="output path without extension (.md and .json are written)")
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.scale = 2, 0.5
    enable_compilation_cache(enabled=not args.no_cache)
    streams = [s.strip() for s in args.streams.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    for s in streams:
        if s not in STREAMS:
            raise ValueError(f"--streams: unknown stream {s!r}; choose from {list(STREAMS)}")
    for k in kinds:
        if k not in ("abrupt", "gradual"):
            raise ValueError(f"--kinds: unknown kind {k!r}; choose from abrupt, gradual")

    keys = jax.random.split(jax.random.key(0), args.seeds)
    record = {"settings": vars(args), "device": str(jax.devices()[0]), "results": {}}
    sections = []
    for stream in streams:
        spec = STREAMS[stream]
        source = spec["source"](args)
        L = max(8, int(round(spec["episodes"] * args.scale)))
        for kind in kinds:
            blend = L // 2
            if kind == "abrupt":
                schedules = [irregular_schedule(TASKS, TASKS * L, min_length=int(0.6 * L), seed=1000 + i)
                             for i in range(args.seeds)]
                methods, text = ABRUPT, (f"{TASKS} tasks switching abruptly at irregular episodes (each segment "
                                         f">= {int(0.6 * L)}, {TASKS * L} episodes in all)")
            else:
                # one stream per seed, all equal: the same program as the abrupt streams (compiled once)
                schedules = [gradual_schedule([L] * TASKS, blend=blend)] * args.seeds
                methods, text = GRADUAL, (f"{TASKS} tasks of {L} episodes blended linearly over {blend} episodes "
                                          f"around each switch")
            cells = {}
            for strategy, boundaries, lagged in methods:
                c = run_cell(source, spec, strategy, boundaries, schedules, keys, args.decay, lagged, blend)
                cells[label(strategy, boundaries, lagged)] = c
                print(f"{stream:>6} {kind:>7} {label(strategy, boundaries, lagged):>30}: ACC "
                      f"{cell(c['average_performance'])}  delay {cell(c['mean_delay'], 1, False)}  missed "
                      f"{c['missed'].tolist()}  false {c['false_alarms'].tolist()}  [{c['seconds']:.0f} s]",
                      flush=True)
            sections.append(f"### {stream}, {kind}\n\n{text}; {args.seeds} seeds.\n\n{table(cells)}")
            record["results"][f"{stream}/{kind}"] = {
                "episodes_per_segment": L, "schedules": [{"weights_shape": list(s.weights.shape),
                                                          "order": s.order.tolist(),
                                                          "boundaries": s.boundaries.tolist(),
                                                          "changes": s.changes.tolist()} for s in schedules],
                "methods": {name: to_json(c) for name, c in cells.items()}}
    text = "\n\n".join(sections)
    print(text)
    write_atomic(args.out + ".md", text + "\n")
    write_atomic(args.out + ".json", json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
