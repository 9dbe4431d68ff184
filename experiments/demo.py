"""The main demo: an agent learns three tasks in a closed loop, with plain fine-tuning and with EWC, side by side.

::

    python experiments/demo.py                    # under a minute on a laptop CPU, compilation included
    python experiments/demo.py --episodes 10      # the seed example's numbers (too few updates to learn much)

Scores are normalized per task: 1 = the task's expert, 0 = the zero action (clipped below at -1). Fine-tuning
learns each task and forgets the earlier ones (backward transfer near -1); EWC keeps most of them.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from clloop_jax import ContinualLearningLoop, CrossModalModel, Environment, enable_compilation_cache
from clloop_jax.metrics import format_matrix


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50, help="closed-loop episodes (updates) per task")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--ewc-lambda", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off "
                   "(it is kept in ~/.cache/clloop_jax/xla, or $CLLOOP_JAX_CACHE_DIR)")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)

    environment = Environment(observation_dim=64, action_dim=32, num_modalities=2)
    model = CrossModalModel(input_dim=64, hidden_dim=64, output_dim=32, num_modalities=2)

    results = {}
    for strategy in ("none", "ewc"):
        print(f"\n== {'fine-tuning' if strategy == 'none' else 'EWC'} (strategy={strategy!r}) ==", flush=True)
        t0 = time.perf_counter()
        loop = ContinualLearningLoop(model=model, environment=environment, learning_rate=args.learning_rate,
                                     ewc_lambda=args.ewc_lambda, feedback_weight=0.3, strategy=strategy,
                                     seed=args.seed)
        results[strategy] = loop.continual_learning_cycle(num_tasks=args.tasks, episodes_per_task=args.episodes,
                                                          verbose=True)
        print(f"({time.perf_counter() - t0:.1f} s including compilation)", flush=True)

    names = ["average_performance", "backward_transfer", "forward_transfer", "average_forgetting",
             "learning_accuracy"]
    print("\n== side by side ==\n")
    print("| metric | fine-tuning | EWC |\n|---|---:|---:|")
    for name in names:
        print(f"| {name} | {results['none'][name]:+.3f} | {results['ewc'][name]:+.3f} |")
    for strategy, title in (("none", "fine-tuning"), ("ewc", "EWC")):
        print(f"\nperformance matrix, {title} (row i: after training on task i; column j: score on task j)\n")
        print(format_matrix(np.asarray(results[strategy]["R"]), b=np.asarray(results[strategy]["baseline"])))


if __name__ == "__main__":
    main()
