"""Class-incremental split MNIST on real images: the rehearsal strategies against the penalties and fine-tuning.

Five tasks of two digits ({0, 1}, {2, 3}, ...), the 5,000 real MNIST images of ``clloop_jax.datasets.load_mnist``
(400 training and 100 test images per digit), an MLP 400-400, Adam, batches of 128, ``--updates`` per task, all
seeds in one compiled program per strategy (``jax.vmap``). Class-incremental: one head over the ten digits, trained
on the classes seen so far, evaluated on all ten. Replay, A-GEM and DER++ keep a memory of 500 images; penalty
strengths are those chosen on split digits (``experiments/scenarios.py``, ``LAMBDA["split/class"]``); the Fisher is
the sampled one (one label draw per image, 256 images per task)::

    python experiments/mnist.py                          # 5 seeds, 300 updates per task; about 15 min on 2 cores
    python experiments/mnist.py --seeds 2 --updates 100 --strategies none,replay    # a quick look

Writes ``experiments/results/mnist.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from clloop_jax.compilation import enable_compilation_cache
from clloop_jax.datasets import load_mnist, split_stream
from clloop_jax.loop import RunConfig, make_joint_run, make_run
from clloop_jax.model import MLP
from clloop_jax.report import cell, paired_table, summary_table
from clloop_jax.sources import SupervisedSource
from clloop_jax.strategies import agem, derpp, get_strategy, replay

#: Strengths chosen on split digits, class-incremental (experiments/scenarios.py).
LAMBDA = {"ewc": 1000.0, "online_ewc": 1000.0, "si": 100.0}
MEMORY = 500

#: Published class-incremental split MNIST (van de Ven & Tolias 2019, arXiv:1904.07734; full MNIST,
#: MLP 2x400, 2000 iterations of batch 128 per task).
PUBLISHED = {"none": "19.90 ± 0.02", "ewc": "20.01 ± 0.06", "online_ewc": "19.96 ± 0.07", "si": "19.99 ± 0.06",
             "lwf": "23.85 ± 0.44"}


def strategy_for(name: str):
    if name == "replay":
        return replay(capacity=MEMORY, batch_size=128)
    if name == "agem":
        return agem(capacity=MEMORY, batch_size=256)
    if name == "derpp":
        return derpp(capacity=MEMORY, batch_size=128)
    return get_strategy(name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--strategies", default="none,ewc,online_ewc,si,lwf,agem,derpp,replay")
    p.add_argument("--no-joint", action="store_true")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "mnist"))
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)

    x, y, x_test, y_test = load_mnist()
    stream = split_stream(x, y, classes_per_task=2, seed=0, x_test=x_test, y_test=y_test, scenario="class")
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(400, 400)), stream, batch_size=128,
                              fisher_size=256)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    results, extra, seconds = {}, {}, {}
    for name in args.strategies.split(","):
        run = make_run(RunConfig(strategy=strategy_for(name), episodes_per_task=args.updates, monitors=(),
                                 max_grad_norm=None), source)
        values = {"lam": LAMBDA[name]} if name in LAMBDA else {}
        hp = run.hparams(learning_rate=1e-3, **values)
        t0 = time.perf_counter()
        _, res = jax.jit(jax.vmap(run, in_axes=(0, None)))(keys, hp)
        results[name] = (np.asarray(res.R, np.float64), np.asarray(res.baseline, np.float64))
        seconds[name] = time.perf_counter() - t0  # compilation included
        memory = f"{MEMORY} images" if name in ("replay", "agem", "derpp") else "-"
        extra[name] = {"lambda": f"{LAMBDA[name]:g}" if name in LAMBDA else "-", "memory": memory,
                       "published ACC (%)": PUBLISHED.get(name, "-")}
        print(f"{name:>10}: final average accuracy {cell(results[name][0][:, -1].mean(axis=1))}  "
              f"[{seconds[name]:.0f} s]", flush=True)
    joint = None
    if not args.no_joint:
        config = RunConfig(strategy="none", episodes_per_task=args.updates, monitors=(), max_grad_norm=None)
        joint_fn = make_joint_run(config, source.joint())
        hp = make_run(config, source.joint()).hparams(learning_rate=1e-3)
        joint = np.asarray(jax.jit(jax.vmap(joint_fn, in_axes=(0, None)))(keys, hp), np.float64)
        print(f"{'joint':>10}: average accuracy {cell(joint.mean(axis=1))}", flush=True)

    lines = [f"Class-incremental split MNIST (5 tasks of 2 digits; 4,000 training / 1,000 test real images), MLP "
             f"400-400, Adam 1e-3, batch 128, {args.updates} updates per task, {args.seeds} seeds; mean ± 95% "
             f"t interval over seeds. Published numbers: van de Ven & Tolias 2019 (60,000 images, 2,000 "
             f"updates per task).", "", summary_table(results, extra=extra)]
    if joint is not None:
        lines.append(f"| joint (upper bound) | - | - | - | {cell(joint.mean(axis=1))} | - | - | - | - |")
    if "none" in results and len(results) > 1:
        lines += ["", paired_table(results, "none")]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"settings": vars(args), "seconds": seconds, "device": str(jax.devices()[0]),
                   "joint": None if joint is None else joint.tolist(),
                   "strategies": {n: {"R": r[0].tolist(), "baseline": r[1].tolist()} for n, r in results.items()}},
                  f, indent=1)


if __name__ == "__main__":
    main()
