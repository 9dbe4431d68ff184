"""The streaming strategies' settings on gradual task-free streams, chosen on tuning seeds.

For each stream of :mod:`taskfree` (``experiments/taskfree.py``) and each boundary-free strategy, a grid over the
penalty strength ``lam`` and the anchor's memory: ``anchor_decay = 1 - 1 / (m * blend)``, a horizon of ``m`` times
the blend length (in updates; one update per episode), while the importance keeps the long memory ``decay`` of the
main experiment. Every point is the main experiment's gradual cell (an
:class:`~clloop_jax.workflow.experiment.ExperimentConfig`) on held-out tuning seeds (100, 101, ...), never the
reported seeds (0 .. S-1), trained into its own run folder under ``--runs`` (a finished folder is read back, so a
stream can be extended or another added); the score is the average final performance (ACC) over the tuning seeds,
next to fine-tuning's on the same seeds (the seeds change the initialisation, the worlds' and minibatches' draws; the
tasks and the blend schedule are those of the main experiment). A second stage (``EXTRA``) adds points where the
first left the choice open. One compiled program per strategy (``lam``, ``decay`` and ``anchor_decay`` are
traced)::

    python experiments/taskfree_tune.py                    # the world, 3 tuning seeds (about 25 minutes, 2 shared cores)
    python experiments/taskfree_tune.py --streams digits   # about 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import taskfree

from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic

RUNS = os.path.join(taskfree.RUNS, "tune")
#: the first held-out tuning seed; the tuning runs use ``TUNING_SEED, TUNING_SEED + 1, ...``
TUNING_SEED = 100
#: per strategy: the strengths tried, each at every anchor horizon ``m`` of HORIZONS and the importance's memory
#: ``--decay``
GRID = {"world": {"streaming_ewc": (0.3, 1.0, 3.0), "streaming_si": (10.0, 100.0, 1000.0)},
        "digits": {"streaming_ewc": (3.0, 10.0, 30.0), "streaming_si": (2.0, 20.0, 200.0)}}
HORIZONS = (0.5, 1.0, 2.0)
DECAY = 0.999   # the importance's memory of the main experiment (``--decay``)
#: a second stage where the first left the choice open: on the world a weaker EWC at every horizon, and a shorter
#: importance memory (``decay``, horizons of 50 and 100 episodes) around the first stage's best settings; on digits a
#: stronger EWC at every horizon (the first stage's best strength was its largest)
EXTRA = {"world": {"streaming_ewc": [(0.1, m, None) for m in HORIZONS] + [(lam, 1.0, d) for lam in (0.3, 1.0)
                                                                         for d in (0.98, 0.99)],
                   "streaming_si": [(100.0, 0.5, d) for d in (0.98, 0.99)]},
         "digits": {"streaming_ewc": [(100.0, m, None) for m in HORIZONS]}}


def points(stream: str, decay: float):
    """``{strategy: [(lam, m, decay), ...]}``: the grid and the second stage."""
    out = {}
    for strategy, lams in GRID[stream].items():
        out[strategy] = [(lam, m, decay) for m in HORIZONS for lam in lams]
        out[strategy] += [(lam, m, decay if d is None else d) for lam, m, d in EXTRA[stream].get(strategy, [])]
    return out


def blend_episodes(stream: str) -> int:
    """The main experiment's blend on ``stream``, in episodes."""
    return taskfree.SCHEDULES["gradual"].episodes(taskfree.segment_episodes(stream, 1.0))["blend"]


def table(stream: str, rows: dict) -> str:
    """The grid of one stream as Markdown: mean ACC over the tuning seeds and its gain over fine-tuning."""
    best = rows.get("best", {})
    n_seeds = len(rows["fine-tuning"]["acc"])
    lines = [f"### {stream}, gradual (blend {blend_episodes(stream)} episodes), {n_seeds} tuning seeds", "", "| setting | decay | anchor_decay | ACC (tuning seeds) | minus fine-tuning |",
             "|---|---:|---:|---:|---:|", f"| fine-tuning | - | - | {np.mean(rows['fine-tuning']['acc']):.3f} | - |"]
    for name, r in rows.items():
        if isinstance(r, dict) and "strategy" in r:
            chosen = " (chosen)" if name in best.values() else ""
            lines.append(f"| {name}{chosen} | {r.get('decay', DECAY):g} | {r['anchor_decay']:.4f} | "
                         f"{np.mean(r['acc']):.3f} | "
                         f"{np.mean(r['gain']):+.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="world", help="comma-separated: world, digits")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--decay", type=float, default=DECAY, help="memory of the importance (as the main experiment)")
    p.add_argument("--runs", default=RUNS, help="where the run folders live")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "taskfree_tune"))
    args = p.parse_args(argv)
    enable_compilation_cache()
    seeds = list(range(TUNING_SEED, TUNING_SEED + args.seeds))
    record = {"settings": {}, "horizons": HORIZONS, "results": {}}
    if os.path.exists(args.out + ".json"):            # other streams' results stay
        with open(args.out + ".json") as f:
            record = json.load(f)
    for stream in [s.strip() for s in args.streams.split(",")]:
        L, blend = taskfree.segment_episodes(stream, 1.0), blend_episodes(stream)
        record["settings"][stream] = {**vars(args), "runs": os.path.relpath(args.runs), "out": os.path.relpath(args.out),
                                      "seeds": seeds}

        def score(strategy, name, hparams):
            experiment = taskfree.experiment_for(stream, "gradual", strategy, "none", len(seeds), L, hparams)
            c = taskfree.trained(experiment, os.path.join(args.runs, stream), name, seeds=seeds)
            return np.asarray(c["average_performance"], np.float64), c["seconds"] or 0.0

        ref, sec = score("none", "fine-tuning", {})
        rows = {"fine-tuning": {"acc": ref.tolist()}}
        print(f"{stream} fine-tuning: {ref.mean():.3f} [{sec:.0f} s]", flush=True)
        for strategy, grid in points(stream, args.decay).items():
            for lam, m, decay in grid:
                name = f"{strategy} lam={lam:g} m={m:g}" + ("" if decay == args.decay else f" decay={decay:g}")
                a = taskfree.anchor_decay_for(m, blend)
                acc, sec = score(strategy, name, {"lam": lam, "decay": decay, "anchor_decay": a})
                rows[name] = {"strategy": strategy, "lam": lam, "m": m, "decay": decay, "anchor_decay": a,
                              "acc": acc.tolist(), "gain": (acc - ref).tolist()}
                print(f"{stream} {name} (anchor_decay {a:.4f}): ACC {acc.mean():.3f}, minus fine-tuning "
                      f"{(acc - ref).mean():+.3f} [{sec:.0f} s]", flush=True)
        best = {}
        for strategy in GRID[stream]:
            cands = [(np.mean(r["acc"]), n) for n, r in rows.items() if r.get("strategy") == strategy]
            best[strategy] = max(cands)[1]
        record["results"][stream] = dict(rows, best=best)
        write_atomic(args.out + ".json", json.dumps(record, indent=1))
    text = "\n\n".join(table(stream, rows) for stream, rows in record["results"].items())
    print(text)
    write_atomic(args.out + ".md", text + "\n")


if __name__ == "__main__":
    main()
