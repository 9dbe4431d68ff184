"""The same continual-learning job on clloop_jax and on Avalanche (PyTorch): accuracy and wall time side by side.

The job: class-incremental split MNIST, five tasks of two digits ({0, 1}, {2, 3}, ... in this fixed order), on the
5,000 real images of ``clloop_jax.data.load_mnist`` (800 training and 200 test images per task, the arrays that
``split_stream(..., seed=0, scenario="class")`` cuts; the very same arrays are handed to Avalanche as tensor datasets,
one experience per task). An MLP 784-400-400-10 with ReLU, Adam (learning rate 1e-3, state reset at each task on both
sides), batches of 128, ``--updates`` optimizer updates per task, evaluated on the ten-way head after every task.

* clloop_jax: all seeds vmapped in one compiled program per strategy (as ``experiments/mnist.py`` runs them); the
  time is split into the ahead-of-time compilation (``jax.jit(...).lower(...).compile()``) and the run of the
  compiled program. The persistent compilation cache is off unless ``--cache`` is given, so the compile time is a
  real compilation.
* Avalanche: one seed after another, eager PyTorch on the CPU (``--torch-device cuda`` on a GPU; no compilation). Each task is trained for
  ``ceil(updates / 6)`` epochs of the 800 images in shuffled batches of 128 with the incomplete last batch dropped
  (``drop_last=True``: 6 updates per epoch), and a plugin stops training after exactly ``updates`` optimizer
  updates (50 full epochs for 300 updates). Its time is the sum over seeds of training and evaluating.

Each strategy's settings on both sides, and every known difference between them, are in ``SETTINGS`` (copied into
the JSON). ``--all-outputs`` and ``--task-sample`` change our side only, to trace an accuracy gap::

    python benchmarks/peer_avalanche.py                       # 6 strategies, 5 seeds, 300 updates per task
    python benchmarks/peer_avalanche.py --ours-only --seeds 2 --updates 20 --strategies agem   # a quick look
    python benchmarks/peer_avalanche.py --table               # the markdown table again, from the JSON

Avalanche and PyTorch are the optional extra ``peer`` (``pip install -e ".[peer]"``); ``--ours-only`` runs without
them. A run of one side keeps the other side's results already in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.data import load_mnist, split_stream
from clloop_jax.metrics import mean_ci
from clloop_jax.model import MLP
from clloop_jax.run import RunConfig, make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import agem, derpp, get_strategy, lwf, replay
from clloop_jax.workflow.compilation import enable_compilation_cache

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "peer_avalanche.json")
STRATEGIES = ("none", "ewc", "lwf", "agem", "derpp", "replay")
LEARNING_RATE = 1e-3
BATCH = 128
HIDDEN = (400, 400)
MEMORY = 500
EWC_LAMBDA = 1000.0  # ours: (lam / 2) sum_i F_i (theta_i - theta*_i)^2 per past task
LWF_ALPHA, LWF_TEMPERATURE = 1.0, 2.0
DER_ALPHA, DER_BETA = 0.5, 0.5
AGEM_SAMPLE = 256
TASK_SAMPLE = 256  # training images of a finished task handed to its consolidation (Fisher sample, A-GEM intake)
AGEM_PER_TASK = MEMORY // 4  # Avalanche keeps a fixed number per task: 4 earlier tasks fill 500 by the last task

#: Each strategy's settings on both sides, and how they differ (written into the JSON and BENCHMARKS.md).
SETTINGS = {
    "none": {"ours": "fine-tuning", "avalanche": "Naive",
             "differences": []},
    "ewc": {"ours": f"ewc(lam={EWC_LAMBDA:g}), sampled Fisher on 256 training images per task",
            "avalanche": f"EWC(ewc_lambda={EWC_LAMBDA / 2:g}, mode='separate')",
            "differences": ["Avalanche's penalty is ewc_lambda * sum F (theta - theta*)^2, ours (lam / 2) * the same "
                            "sum: ewc_lambda = lam / 2 gives the same penalty for the same F",
                            "the Fisher: ours the sampled Fisher (one label drawn from the model per image, per-image "
                            "squared gradients, 256 images, softmax over the classes seen so far); Avalanche the "
                            "squared gradient of each minibatch's mean loss (batches of 128 over all 800 images, "
                            "true labels), averaged over the minibatches, which is about 1/128 of the per-image "
                            "Fisher where the per-image gradients disagree"]},
    "lwf": {"ours": f"lwf(alpha={LWF_ALPHA:g}, temperature={LWF_TEMPERATURE:g})",
            "avalanche": f"LwF(alpha={LWF_ALPHA:g}, temperature={LWF_TEMPERATURE:g})",
            "differences": ["ours multiplies the KL divergence by T^2 = 4 (Hinton et al. 2015); Avalanche does not",
                            "ours distills over the outputs of every class seen so far including the current task's "
                            "(the training mask); Avalanche over the earlier tasks' classes only"]},
    "agem": {"ours": f"agem(capacity={MEMORY}, batch_size={AGEM_SAMPLE})",
             "avalanche": f"AGEM(patterns_per_exp={AGEM_PER_TASK}, sample_size={AGEM_SAMPLE})",
             "differences": [f"memory: ours one reservoir of {MEMORY} images fed with 256 random training images of "
                             "each finished task (256 images of task 1 while training task 2, about 500/k of each "
                             f"of k earlier tasks later); Avalanche {AGEM_PER_TASK} random images per finished task "
                             f"({AGEM_PER_TASK * 4} by the last task)",
                             f"reference gradient: ours {AGEM_SAMPLE} memory images drawn uniformly with "
                             f"replacement; Avalanche {AGEM_SAMPLE} // k from each of the k earlier tasks, in a fixed "
                             "order (its memory loader does not shuffle; with k <= 2 that is nearly all the memory)"]},
    "derpp": {"ours": f"derpp(capacity={MEMORY}, batch_size={BATCH}, alpha={DER_ALPHA:g}, beta={DER_BETA:g})",
              "avalanche": f"DER(mem_size={MEMORY}, batch_size_mem={BATCH}, alpha={DER_ALPHA:g}, beta={DER_BETA:g})",
              "differences": ["memory: ours a reservoir over every training batch seen (current task included), "
                              "each image with the logits it had when seen; Avalanche a class-balanced buffer "
                              "filled at each task's end with the logits of the model at that time",
                              "ours draws two memory batches (logit matching, labels); Avalanche one for both"]},
    "replay": {"ours": f"replay(capacity={MEMORY}, batch_size={BATCH}, alpha=1)",
               "avalanche": f"Replay(mem_size={MEMORY}), memory batch {BATCH}",
               "differences": ["memory: ours a reservoir over every training batch seen (current task included); "
                               "Avalanche an experience-balanced buffer filled at each task's end",
                               "loss: ours task loss + memory loss (two means of 128); Avalanche the mean over the "
                               "concatenated 256 images (half the gradient's scale, which Adam undoes)"]},
}
COMMON_DIFFERENCES = [
    "the training loss: ours a softmax over the classes seen so far (the masked head of van de Ven & Tolias 2019); "
    "Avalanche a softmax over all ten outputs from the first task on",
    "batches: ours 128 images drawn without replacement for every update; Avalanche shuffled epochs",
    "initial weights: the same distribution (LeCun truncated normal, zero biases), different random numbers",
]


# ----------------------------------------------------------------------------------------------------------------
# The data, shared by both sides
# ----------------------------------------------------------------------------------------------------------------


def make_stream():
    x, y, x_test, y_test = load_mnist()
    return split_stream(x, y, classes_per_task=2, seed=0, x_test=x_test, y_test=y_test, scenario="class")


def task_arrays(stream) -> dict:
    """The stream's per-task arrays as NumPy (``x [T, N, 784]``, ``y [T, N]``, ``x_test``, ``y_test``)."""
    return {k: np.asarray(getattr(stream, k)) for k in ("x", "y", "x_test", "y_test")}


# ----------------------------------------------------------------------------------------------------------------
# clloop_jax
# ----------------------------------------------------------------------------------------------------------------


def our_strategy(name: str):
    if name == "replay":
        return replay(capacity=MEMORY, batch_size=BATCH)
    if name == "agem":
        return agem(capacity=MEMORY, batch_size=AGEM_SAMPLE)
    if name == "derpp":
        return derpp(capacity=MEMORY, batch_size=BATCH, alpha=DER_ALPHA, beta=DER_BETA)
    if name == "lwf":
        return lwf(alpha=LWF_ALPHA, temperature=LWF_TEMPERATURE)
    return get_strategy(name)


def run_ours(name: str, stream, seeds: int, updates: int, all_outputs: bool = False,
             task_sample: int = TASK_SAMPLE) -> dict:
    """All seeds of one strategy in one compiled program: the accuracy matrices and the compile and run times.
    ``all_outputs`` trains every task on all ten outputs (Avalanche's loss) instead of the classes seen so far;
    ``task_sample`` is the number of a finished task's training images handed to its consolidation (EWC's Fisher
    sample, A-GEM's memory intake)."""
    if all_outputs:
        stream = stream.replace(train_mask=jnp.ones_like(stream.train_mask))
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=HIDDEN), stream, batch_size=BATCH,
                              fisher_size=task_sample)
    config = RunConfig(strategy=our_strategy(name), episodes_per_task=updates, monitors=(), max_grad_norm=None)
    run = make_run(config, source)
    values = {"lam": EWC_LAMBDA} if name == "ewc" else {}
    hp = run.hparams(learning_rate=LEARNING_RATE, **values)
    keys = jax.random.split(jax.random.key(0), seeds)
    load = os.getloadavg()
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(run, in_axes=(0, None))).lower(keys, hp).compile()
    t1 = time.perf_counter()
    _, res = jax.block_until_ready(compiled(keys, hp))
    t2 = time.perf_counter()
    R = np.asarray(res.R, np.float64)  # [seed, after task i, accuracy on task j]
    return {"R": R.tolist(), "final_acc": R[:, -1].mean(axis=1).tolist(), "compile_s": t1 - t0, "run_s": t2 - t1,
            "load_avg_before": load[0], "all_outputs": all_outputs, "task_sample": task_sample}


# ----------------------------------------------------------------------------------------------------------------
# Avalanche (imported only here: --ours-only runs without PyTorch)
# ----------------------------------------------------------------------------------------------------------------


def _torch_mlp(torch):
    """784-400-400-10 ReLU, initialised like flax's Dense: LeCun truncated normal kernels, zero biases."""
    layers = []
    sizes = (784,) + HIDDEN + (10,)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        dense = torch.nn.Linear(n_in, n_out)
        # flax's truncated normal: std sqrt(1 / fan_in) after truncation at two standard deviations
        std = math.sqrt(1.0 / n_in) / 0.87962566103423978
        torch.nn.init.trunc_normal_(dense.weight, std=std, a=-2 * std, b=2 * std)
        torch.nn.init.zeros_(dense.bias)
        layers.append(dense)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _peer_benchmark(arrays):
    import torch
    from avalanche.benchmarks.scenarios import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

    def datasets(x, y):
        return [tensor_dataset(torch.tensor(x[t]), torch.tensor(y[t], dtype=torch.int64),
                               targets=torch.tensor(y[t], dtype=torch.int64), task_labels=0)
                for t in range(x.shape[0])]

    return benchmark_from_datasets(train=datasets(arrays["x"], arrays["y"]),
                                   test=datasets(arrays["x_test"], arrays["y_test"]))


def run_peer_seed(name: str, seed: int, arrays: dict, benchmark, updates: int, device: str = "cpu") -> dict:
    """One seed of one strategy on Avalanche (on the torch ``device``): the accuracy matrix, the time and the updates
    made per task."""
    import torch
    from avalanche.core import SupervisedPlugin
    from avalanche.training import AGEM, DER, EWC, LwF, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin

    class StopAfter(SupervisedPlugin):
        """Stops a task's training after ``n`` optimizer updates and counts them."""

        def __init__(self, n):
            super().__init__()
            self.n, self.counts = n, []

        def before_training_exp(self, strategy, **kwargs):
            self.counts.append(0)

        def after_update(self, strategy, **kwargs):
            self.counts[-1] += 1
            if self.counts[-1] >= self.n:
                strategy.stop_training()

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = _torch_mlp(torch)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    stop = StopAfter(updates)
    per_epoch = arrays["x"].shape[1] // BATCH
    common = dict(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=BATCH,
                  train_epochs=math.ceil(updates / per_epoch), eval_mb_size=1000, device=device,
                  plugins=[stop], evaluator=EvaluationPlugin(loggers=[]))
    strategy = {
        "none": lambda: Naive(**common),
        "ewc": lambda: EWC(ewc_lambda=EWC_LAMBDA / 2, mode="separate", **common),
        "lwf": lambda: LwF(alpha=LWF_ALPHA, temperature=LWF_TEMPERATURE, **common),
        "agem": lambda: AGEM(patterns_per_exp=AGEM_PER_TASK, sample_size=AGEM_SAMPLE, **common),
        "derpp": lambda: DER(mem_size=MEMORY, batch_size_mem=BATCH, alpha=DER_ALPHA, beta=DER_BETA, **common),
        "replay": lambda: Replay(mem_size=MEMORY, **common),
    }[name]()
    x_test = torch.tensor(arrays["x_test"], device=device)
    y_test = torch.tensor(arrays["y_test"], dtype=torch.int64, device=device)
    T = x_test.shape[0]
    R = np.zeros((T, T))
    t0 = time.perf_counter()
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience, eval_streams=[], drop_last=True, reset_optimizer_state=True, num_workers=0)
        model.eval()
        with torch.no_grad():
            for j in range(T):
                R[i, j] = (model(x_test[j]).argmax(dim=1) == y_test[j]).double().mean().item()
        model.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"R": R, "seconds": seconds, "updates": list(stop.counts)}


def run_peer(name: str, arrays: dict, seeds: int, updates: int, threads: int, device: str = "cpu") -> dict:
    import torch
    torch.set_num_threads(threads)
    benchmark = _peer_benchmark(arrays)
    load = os.getloadavg()
    runs = [run_peer_seed(name, seed, arrays, benchmark, updates, device) for seed in range(seeds)]
    R = np.stack([r["R"] for r in runs])
    return {"R": R.tolist(), "final_acc": R[:, -1].mean(axis=1).tolist(), "compile_s": 0.0,
            "run_s": float(sum(r["seconds"] for r in runs)), "seconds_per_seed": [r["seconds"] for r in runs],
            "updates_per_task": runs[0]["updates"], "load_avg_before": load[0],
            "torch_threads": torch.get_num_threads(), "torch_device": device}


# ----------------------------------------------------------------------------------------------------------------
# Summary, table, JSON
# ----------------------------------------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` (Avalanche's time over ours); nan when either is missing or the denominator is
    not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return float("nan")
    return float(numerator) / float(denominator)


def interval(values) -> tuple:
    """Mean and 95% Student t half-width (nan for one value)."""
    m, h = mean_ci(np.asarray(values, np.float64))
    return float(m), float(h)


def summarize(blob: dict) -> list:
    """One row per strategy with both sides' accuracy (mean, half-width), times and the time ratios."""
    rows = []
    names = [n for n in STRATEGIES if n in blob.get("ours", {}) or n in blob.get("avalanche", {})]
    for name in names:
        ours, peer = blob.get("ours", {}).get(name), blob.get("avalanche", {}).get(name)
        row = {"strategy": name}
        for side, res in (("ours", ours), ("avalanche", peer)):
            if res is None:
                continue
            m, h = interval(res["final_acc"])
            row[side] = {"acc_mean": m, "acc_ci95": h, "seeds": len(res["final_acc"]),
                         "compile_s": res["compile_s"], "run_s": res["run_s"],
                         "total_s": res["compile_s"] + res["run_s"]}
        if ours is not None and peer is not None:
            o, p = row["ours"], row["avalanche"]
            row["run_ratio"] = ratio(p["run_s"], o["run_s"])
            row["total_ratio"] = ratio(p["total_s"], o["total_s"])
            row["acc_difference"] = o["acc_mean"] - p["acc_mean"]
            row["intervals_overlap"] = bool(abs(row["acc_difference"]) <= (o["acc_ci95"] if np.isfinite(
                o["acc_ci95"]) else 0.0) + (p["acc_ci95"] if np.isfinite(p["acc_ci95"]) else 0.0))
        rows.append(row)
    return rows


def interval_row(res: dict) -> dict:
    m, h = interval(res["final_acc"])
    return {"acc_mean": m, "acc_ci95": h}


def _acc(side) -> str:
    if side is None:
        return "-"
    h = side["acc_ci95"]
    return f"{side['acc_mean']:.3f}" + (f" ± {h:.3f}" if np.isfinite(h) else "")


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def table(blob: dict) -> str:
    rows = blob.get("rows") or summarize(blob)
    lines = ["| strategy | clloop_jax ACC | Avalanche ACC | clloop_jax compile (s) | clloop_jax run (s) | "
             "Avalanche run (s) | Avalanche / clloop_jax, run | Avalanche / clloop_jax, compile + run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, p = r.get("ours"), r.get("avalanche")
        lines.append(f"| {r['strategy']} | {_acc(o)} | {_acc(p)} | {_seconds(o and o['compile_s'])} | "
                     f"{_seconds(o and o['run_s'])} | {_seconds(p and p['run_s'])} | {_ratio(r.get('run_ratio'))} | "
                     f"{_ratio(r.get('total_ratio'))} |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(peer: bool) -> dict:
    info = {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
            "load_avg": list(os.getloadavg())}
    if peer:
        import avalanche
        import torch
        info.update(torch=torch.__version__, avalanche=avalanche.__version__)
    return info


def _write(path: str, blob: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(blob, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--updates", type=int, default=300, help="optimizer updates per task")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--ours-only", action="store_true", help="run clloop_jax only (no PyTorch needed)")
    side.add_argument("--peer-only", action="store_true", help="run Avalanche only")
    p.add_argument("--all-outputs", action="store_true",
                   help="train ours on all ten outputs from the first task (Avalanche's loss), a diagnostic")
    p.add_argument("--task-sample", type=int, default=TASK_SAMPLE,
                   help="ours: training images of a finished task handed to its consolidation (EWC's Fisher sample, "
                        "A-GEM's memory intake), a diagnostic")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="PyTorch's intra-op threads (default 1: on a busy 2-core machine two threads made an update "
                        "of this MLP 5-6x slower than one)")
    p.add_argument("--torch-device", default="cpu",
                   help="where Avalanche trains: cpu (default) or cuda (a GPU machine; ours runs on JAX's default "
                        "device)")
    p.add_argument("--cache", action="store_true", help="use the persistent compilation cache (compile times then "
                   "measure loading the program, not compiling it)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        with open(args.out) as f:
            print(table(json.load(f)))
        return
    names = [n for n in args.strategies.split(",") if n]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if args.seeds < 1 or args.updates < 1:
        p.error("--seeds and --updates must be at least 1")
    enable_compilation_cache(enabled=args.cache)
    blob = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            blob = json.load(f)
    settings = {"seeds": args.seeds, "updates": args.updates, "torch_threads": args.torch_threads,
                "torch_device": args.torch_device, "batch": BATCH,
                "learning_rate": LEARNING_RATE,
                "hidden": list(HIDDEN), "memory": MEMORY, "all_outputs": args.all_outputs,
                "task_sample": args.task_sample,
                "strategies": {n: SETTINGS[n] for n in STRATEGIES}, "common_differences": COMMON_DIFFERENCES}
    stream = make_stream()
    arrays = task_arrays(stream)
    run_ours_side, run_peer_side = not args.peer_only, not args.ours_only
    blob["machine"] = {**blob.get("machine", {}), **machine(run_peer_side)}  # keeps the other side's versions
    for key, run in (("ours", run_ours_side), ("avalanche", run_peer_side)):
        if run:
            stale = blob.get(f"{key}_settings", {})
            if stale and (stale["seeds"], stale["updates"]) != (args.seeds, args.updates):
                blob[key] = {}  # another size: the other strategies' results would not compare
            blob[f"{key}_settings"] = settings
            blob.setdefault(key, {})
    for name in names:
        if run_ours_side:
            blob["ours"][name] = res = run_ours(name, stream, args.seeds, args.updates, args.all_outputs,
                                                     args.task_sample)
            print(f"clloop_jax {name:>7}: ACC {_acc(interval_row(res))}, compile {res['compile_s']:.1f} s, "
                  f"run {res['run_s']:.1f} s ({args.seeds} seeds vmapped)", flush=True)
        if run_peer_side:
            blob["avalanche"][name] = res = run_peer(name, arrays, args.seeds, args.updates, args.torch_threads,
                                                        args.torch_device)
            print(f" Avalanche {name:>7}: ACC {_acc(interval_row(res))}, run {res['run_s']:.1f} s ({args.seeds} "
                  f"seeds in turn, updates per task {res['updates_per_task']})", flush=True)
        blob["rows"] = summarize(blob)
        blob["machine"]["load_avg_end"] = list(os.getloadavg())
        _write(args.out, blob)
    print(table(blob))


if __name__ == "__main__":
    main()
