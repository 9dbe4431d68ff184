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

from clloop_jax import ContinualLearningLoop, CrossModalModel, Environment, enable_compilation_cache
from clloop_jax.metrics import METRIC_MEANINGS, METRIC_NAMES


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

    environment = Environment(observation_dim=64, action_dim=32, num_modalities=2, num_tasks=args.tasks)
    model = CrossModalModel(input_dim=64, hidden_dim=64, output_dim=32, num_modalities=2)

    print(f"An agent learns {args.tasks} tasks one after the other in a closed loop, first by plain fine-tuning, "
          f"then with EWC.\nscore: 1 = the task's expert, 0 = the zero action (clipped at -1); after each task the "
          f"agent is scored on every task.")
    results = {}
    for strategy in ("none", "ewc"):
        print(f"\n== {'fine-tuning' if strategy == 'none' else 'EWC'} (strategy={strategy!r}) ==", flush=True)
        t0 = time.perf_counter()
        loop = ContinualLearningLoop(model=model, environment=environment, learning_rate=args.learning_rate,
                                     ewc_lambda=args.ewc_lambda, feedback_weight=0.3, strategy=strategy,
                                     seed=args.seed)
        results[strategy] = loop.continual_learning_cycle(num_tasks=args.tasks, episodes_per_task=args.episodes,
                                                          verbose=True)
        print(f"({time.perf_counter() - t0:.1f} s in all, compiling or loading from the cache included)", flush=True)

    print("\n== side by side ==\n")
    print("| metric | fine-tuning | EWC | what it says |\n|---|---:|---:|---|")
    for name in METRIC_NAMES:
        print(f"| {name} | {results['none'][name]:+.3f} | {results['ewc'][name]:+.3f} | {METRIC_MEANINGS[name]} |")


if __name__ == "__main__":
    main()
