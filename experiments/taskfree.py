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
the same seeds and streams. Every cell is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig` (``boundaries``
detect, oracle or none; ``taskfree``: irregular switches, segments of at least 0.6 of a task's episodes, or gradual
blends over half of them; seeds 0 .. S-1, seed s's switches drawn with s) trained into its own run folder under
``--runs`` (named after the method and the configuration's hash; a finished folder is read back), all seeds in one
compiled program::

    python experiments/taskfree.py                 # 5 seeds, both streams (about 10 minutes on 2 CPU cores)
    python experiments/taskfree.py --quick         # 2 seeds, short streams: a smoke run
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

import numpy as np

from clloop_jax import metrics
from clloop_jax.report import cell
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import run_or_read, run_seconds
from clloop_jax.workflow.experiment import DataConfig, ExperimentConfig, TaskFreeConfig, TrainConfig
from clloop_jax.workflow.files import config_hash, jsonable, write_atomic

TASKS = 3
RUNS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "runs", "taskfree"))

#: per stream: the experiment (the default world, 3 tasks, the agent imitating each task's expert; or permuted digits,
#: domain-incremental, an MLP 100-100), episodes per segment, and each method's strength. EWC's strengths are those of
#: the known-boundary experiments (forgetting.py, scenarios.py); the streaming strategies' with one memory were picked
#: from {3, 30} (world) and {2, 5, 10, 20, 30, 100} (digits), decay 0.999, on gradual streams with held-out seeds;
#: ``lagged``: ``(lam, m, importance decay)`` of the lagged-anchor variants (None: ``--decay``), chosen by
#: ``experiments/taskfree_tune.py`` (results/taskfree_tune.md) on its held-out seeds (100, 101, 102).
STREAMS = {
    "world": dict(experiment=ExperimentConfig(train=TrainConfig(monitors=())), episodes=100,
                  lam={"ewc": 3.0, "streaming_ewc": 3.0, "streaming_si": 30.0},
                  lagged={"streaming_ewc": (0.3, 1.0, 0.99), "streaming_si": (100.0, 1.0, None)}),
    "digits": dict(experiment=ExperimentConfig(
        source="digits", data=DataConfig(stream="permuted", scenario="domain", permuted_tasks=TASKS,
                                         mlp_hidden=(100, 100), batch_size=64, fisher_size=64),
        train=TrainConfig(fisher_variant="exact", max_grad_norm=None, monitors=())), episodes=200,
        lam={"ewc": 100.0, "streaming_ewc": 10.0, "streaming_si": 2.0},
        lagged={"streaming_ewc": (100.0, 0.5, None), "streaming_si": (2.0, 2.0, None)}),
}

#: (strategy, boundaries, lagged anchor)
ABRUPT = (("ewc", "detect", False), ("ewc", "oracle", False), ("none", "none", False))
GRADUAL = (("none", "none", False), ("streaming_ewc", "none", False), ("streaming_si", "none", False),
           ("streaming_ewc", "none", True), ("streaming_si", "none", True), ("ewc", "detect", False))
#: the schedule of each kind of stream, in fractions of a segment's episodes
SCHEDULES = {"abrupt": TaskFreeConfig(schedule="irregular", min_segment=0.6),
             "gradual": TaskFreeConfig(schedule="gradual", blend=0.5)}


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


def segment_episodes(stream: str, scale: float) -> int:
    return max(8, int(round(STREAMS[stream]["episodes"] * scale)))


def experiment_for(stream: str, kind: str, strategy: str, boundaries: str, seeds: int, episodes: int,
                   hparams: dict) -> ExperimentConfig:
    """The cell's experiment: the stream's, with the method (``hparams``: ``lam`` and the strategy's own, such as a
    streaming strategy's ``decay`` and ``anchor_decay``) and the kind's hidden schedule."""
    base = STREAMS[stream]["experiment"]
    own = tuple(f"{k}={v!r}" for k, v in hparams.items() if k != "lam")
    train = dataclasses.replace(base.train, strategy=strategy, lam=hparams.get("lam"), strategy_hparams=own,
                                episodes_per_task=episodes)
    return dataclasses.replace(base, seeds=seeds, boundaries=boundaries, taskfree=SCHEDULES[kind], train=train)


def trained(experiment: ExperimentConfig, runs: str, name: str, seeds=None) -> dict:
    """The cell read from its run folder (trained there first when it holds no finished run): the performance matrix
    at the true switches, its metrics per seed, the detection and the training time."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    path = os.path.join(runs, f"{slug}_{config_hash(experiment)[:8]}")
    R, baseline = run_or_read(experiment, path, label=name, seeds=seeds)
    with open(os.path.join(path, "detection.json")) as f:
        detection = {k: np.asarray(v, np.float64) for k, v in json.load(f).items()}   # "nan" (text): a missed switch
    return {"R": R, "baseline": baseline, "average_performance": metrics.average_performance(R),
            "backward_transfer": metrics.backward_transfer(R), **detection, "seconds": run_seconds(path),
            "folder": os.path.relpath(path)}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--streams", default="world,digits", help="comma-separated: world, digits")
    p.add_argument("--kinds", default="abrupt,gradual", help="comma-separated: abrupt, gradual")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every stream's episodes per segment")
    p.add_argument("--decay", type=float, default=0.999, help="memory of the streaming strategies")
    p.add_argument("--quick", action="store_true", help="2 seeds, half the episodes")
    p.add_argument("--runs", default=RUNS, help="where the run folders live")
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
        if k not in SCHEDULES:
            raise ValueError(f"--kinds: unknown kind {k!r}; choose from {list(SCHEDULES)}")

    record = {"settings": {**vars(args), "runs": os.path.relpath(args.runs), "out": os.path.relpath(args.out)},
              "results": {}}
    sections = []
    for stream in streams:
        spec = STREAMS[stream]
        L = segment_episodes(stream, args.scale)
        for kind in kinds:
            sizes = SCHEDULES[kind].episodes(L)
            methods, text = {"abrupt": (ABRUPT, f"{TASKS} tasks switching abruptly at irregular episodes (each "
                                                f"segment >= {sizes['min_length']}, {TASKS * L} episodes in all)"),
                             "gradual": (GRADUAL, f"{TASKS} tasks of {L} episodes blended linearly over "
                                                  f"{sizes['blend']} episodes around each switch")}[kind]
            cells = {}
            for strategy, boundaries, lagged in methods:
                name = label(strategy, boundaries, lagged)
                if strategy.startswith("streaming_"):
                    hparams = streaming_hparams(spec, strategy, args.decay, lagged, sizes["blend"])
                else:
                    hparams = {"lam": spec["lam"][strategy]} if strategy in spec["lam"] else {}
                experiment = experiment_for(stream, kind, strategy, boundaries, args.seeds, L, hparams)
                c = trained(experiment, os.path.join(args.runs, f"{stream}_{kind}"), name)
                cells[name] = dict(c, strategy=strategy, boundaries=boundaries, hparams=hparams)
                print(f"{stream:>6} {kind:>7} {name:>30}: ACC {cell(c['average_performance'])}  delay "
                      f"{cell(c['mean_delay'], 1, False)}  missed {c['missed'].tolist()}  false "
                      f"{c['false_alarms'].tolist()}  [{c['seconds'] or 0:.0f} s, {c['folder']}]", flush=True)
            sections.append(f"### {stream}, {kind}\n\n{text}; {args.seeds} seeds.\n\n{table(cells)}")
            record["results"][f"{stream}/{kind}"] = {"episodes_per_segment": L, "schedule": SCHEDULES[kind],
                                                     "methods": cells}
    text = "\n\n".join(sections)
    print(text)
    write_atomic(args.out + ".md", text + "\n")
    write_atomic(args.out + ".json", json.dumps(jsonable(record), indent=1))


if __name__ == "__main__":
    main()
