"""A run killed with SIGKILL in the middle (no handler runs, no file is closed) and resumed ends bitwise where the
uninterrupted run ends: class-incremental split MNIST with replay, and gymnax Pendulum with EWC (PPO, persistent
environments, a decaying learning rate). Each run is its own ``clloop`` process, as a user's would be."""
import os
import signal
import subprocess
import sys
import time

import pytest

KINDS = {
    "mnist-replay": ["--preset", "split-mnist", "--strategy", "replay", "--memory", "100", "--seeds", "2",
                     "--episodes-per-task", "300"],
    # the pendulum preset: PPO epochs over environments that keep running, each task's rate decaying to 0
    "pendulum-ewc": ["--preset", "pendulum", "--strategy", "ewc", "--seeds", "2", "--episodes-per-task", "40",
                     "--num-envs", "4", "--rollout-steps", "32", "--ppo-epochs", "2", "--ppo-minibatches", "4",
                     "--policy-hidden", "16"],
}
COMPARED = ("R_seed0.csv", "R_seed1.csv", "traces.jsonl", "summary.json")


def clloop(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "clloop_jax", "run", "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_sigkill_then_resume_equals_the_uninterrupted_run(kind, tmp_path):
    env = {**os.environ, "CLLOOP_JAX_CACHE_DIR": str(tmp_path / "xla")}   # the three processes share compilations
    env.pop("CLLOOP_JAX_NO_CACHE", None)                                    # (the suite turns the cache off)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    done = clloop([*KINDS[kind], "--out", full], env)
    assert done.wait(timeout=1200) == 0, done.stderr.read().decode()
    victim = clloop([*KINDS[kind], "--out", part], env)
    seal = os.path.join(part, "checkpoints", "task_0.json")
    deadline = time.time() + 1200
    while not os.path.exists(seal) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)   # after the first task's checkpoint, during a later task
    assert victim.wait(timeout=60) == -signal.SIGKILL
    tasks = sorted(n for n in os.listdir(os.path.join(part, "checkpoints")) if n.endswith(".json"))
    assert tasks and not os.path.exists(os.path.join(part, "summary.json")), tasks   # killed mid-run
    resumed = clloop([*KINDS[kind], "--out", part, "--resume"], env)
    assert resumed.wait(timeout=1200) == 0, resumed.stderr.read().decode()
    for name in COMPARED:
        with open(os.path.join(part, name), "rb") as a, open(os.path.join(full, name), "rb") as b:
            assert a.read() == b.read(), f"{kind}: {name} differs after the resume (killed after {tasks})"
