"""Environment + policy steps per second: a ``lax.scan`` rollout next to a Python loop of jitted steps.

Both run the default :class:`LatentWorld` (2 modalities x 64 features, 32-d actions, 40-step
episodes) with the same small MLP policy (obs + feedback -> 64 tanh -> 32) and the same keys, for
1 and 64 parallel environments. Times are medians of several repeats after a warm-up call, with
``block_until_ready``; compile time is reported separately. Writes ``results/bench_env.json``.

Run: ``python benchmarks/bench_env.py [--steps 400] [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.envs import LatentWorld, rollout


def make_mlp_policy(key, env: LatentWorld, hidden: int = 64):
    in_dim = env.num_modalities * env.observation_dim + env.feedback_dim
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (in_dim, hidden)) / np.sqrt(in_dim)
    w2 = jax.random.normal(k2, (hidden, env.action_dim)) * 0.1 / np.sqrt(hidden)

    def policy(carry, obs, feedback, key):
        del key
        x = jnp.concatenate([obs.reshape(-1), feedback])
        return carry, jnp.tanh(x @ w1) @ w2

    return policy


def make_loop_step(env, params, policy, carry0, num_envs):
    """One jitted closed-loop step with the same key schedule and resets as ``rollout``."""

    def one(state, obs, feedback, pcarry, k):
        k_policy, k_env = jax.random.split(k)
        new_pcarry, action = policy(pcarry, obs, feedback, k_policy)
        obs2, state2, reward, term, trunc, info = env.step(k_env, state, action, params)
        done = jnp.logical_or(term, trunc)
        feedback2 = jnp.where(done, 0.0, info["feedback"])
        pcarry2 = jax.tree.map(lambda i, n: jnp.where(done, i, n), carry0, new_pcarry)
        return (state2, obs2, feedback2, pcarry2), (obs, action, info["target"], reward, done)

    if num_envs is None:
        return jax.jit(one)
    batched = jax.vmap(one)
    return jax.jit(lambda s, o, f, c, k: batched(s, o, f, c, jax.random.split(k, num_envs)))


def time_call(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(env, params, policy, num_envs, num_steps, repeats, key):
    carry0 = jnp.zeros(())
    scan_fn = jax.jit(lambda k: rollout(k, env, params, policy, carry0, num_steps, num_envs))
    start = time.perf_counter()
    traj = jax.block_until_ready(scan_fn(key))
    scan_compile = time.perf_counter() - start
    scan_time = time_call(lambda: scan_fn(key), repeats)

    # the same computation as a Python loop over a jitted step
    step = make_loop_step(env, params, policy, carry0, num_envs)
    reset_key, steps_key = jax.random.split(key)
    keys = list(jax.random.split(steps_key, num_steps))
    if num_envs is None:
        obs0, state0 = env.reset(reset_key, params)
    else:
        obs0, state0 = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(reset_key, num_envs), params)
    batch = () if num_envs is None else (num_envs,)
    init = (state0, obs0, jnp.zeros(batch + (env.feedback_dim,)), jnp.zeros(batch))

    def loop():
        carry, records = init, []
        for k in keys:
            carry, rec = step(*carry, k)
            records.append(rec)
        return records

    start = time.perf_counter()
    records = jax.block_until_ready(loop())
    loop_compile = time.perf_counter() - start
    loop_time = time_call(loop, repeats)
    loop_actions = np.stack([np.asarray(r[1]) for r in records])
    max_diff = float(np.max(np.abs(loop_actions - np.asarray(traj.action))))

    n = num_steps * (1 if num_envs is None else num_envs)
    return {
        "num_envs": 1 if num_envs is None else num_envs,
        "num_steps": num_steps,
        "scan_s": scan_time,
        "loop_s": loop_time,
        "scan_steps_per_s": n / scan_time,
        "loop_steps_per_s": n / loop_time,
        "scan_over_loop": loop_time / scan_time,
        "scan_compile_s": scan_compile,
        "loop_first_call_s": loop_compile,
        "max_abs_action_diff_scan_vs_loop": max_diff,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "bench_env.json")
    args = parser.parse_args()

    env = LatentWorld()
    params = env.default_params
    policy = make_mlp_policy(jax.random.key(1), env)
    rows = []
    print(f"device={jax.devices()[0]} jax={jax.__version__} steps={args.steps} "
          f"repeats={args.repeats} (median)")
    print(f"{'envs':>5} {'scan steps/s':>14} {'loop steps/s':>14} {'scan/loop':>10} "
          f"{'scan compile s':>15} {'max|diff|':>10}")
    for num_envs in (None, 64):
        row = bench(env, params, policy, num_envs, args.steps, args.repeats, jax.random.key(0))
        rows.append(row)
        print(f"{row['num_envs']:>5} {row['scan_steps_per_s']:>14.0f} "
              f"{row['loop_steps_per_s']:>14.0f} {row['scan_over_loop']:>10.1f} "
              f"{row['scan_compile_s']:>15.2f} {row['max_abs_action_diff_scan_vs_loop']:>10.2e}")

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_env",
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "env": {"observation_dim": env.observation_dim, "action_dim": env.action_dim,
                "num_modalities": env.num_modalities, "latent_dim": env.latent_dim,
                "episode_length": env.episode_length},
        "policy": "MLP obs+feedback -> 64 tanh -> action",
        "repeats": args.repeats,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
