"""Long task streams: rows of R evaluated in full only every k tasks (the skipped evaluations not run), traces kept
as one summary per task, and a supervised source that presents each task's samples once (an epoch)."""
import dataclasses

import jax
import numpy as np
import pytest

from clloop_jax.data.streams import permuted_stream
from clloop_jax.model import MLP
from clloop_jax.monitors import functional_divergence
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource

T = 5


@pytest.fixture(scope="module")
def source(digits):
    x, y = digits
    stream = permuted_stream(x[:300], y[:300], T, seed=0)
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=16, fisher_size=8,
                            eval_size=20)


@dataclasses.dataclass(frozen=True)
class Counting:
    """A source that counts the tasks its ``score`` evaluates, as the compiled program runs (host callback)."""

    base: object
    counter: list = dataclasses.field(compare=False, hash=False)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def score(self, key, params, task, hp):
        jax.debug.callback(lambda ids: self.counter.append(np.size(ids)), task.task_ids)
        return self.base.score(key, params, task, hp)


def full_rows(k):
    return [i for i in range(T) if (i + 1) % k == 0 or i == T - 1]


@pytest.fixture(scope="module")
def runs(source):
    """The full run and runs with evaluate_every=2 and 3 (the last with per-task traces), 2 seeds vmapped."""
    keys = jax.random.split(jax.random.key(0), 2)
    out = {}
    for k, traces in ((1, "episodes"), (2, "episodes"), (3, "tasks")):
        run = make_run(RunConfig(strategy="ewc", episodes_per_task=4, monitors=("parameter",), evaluate_every=k,
                                 traces=traces), source)
        hp = run.hparams(learning_rate=1e-2, lam=10.0)
        out[k] = (run, hp, jax.vmap(run, in_axes=(0, None))(keys, hp)[1])
    return keys, out


@pytest.mark.parametrize("k", [2, 3])
def test_rows_are_the_full_runs_at_every_kth_task_and_the_diagonal_elsewhere(runs, k):
    _, out = runs
    R_full, R = np.asarray(out[1][2].R), np.asarray(out[k][2].R)
    np.testing.assert_array_equal(out[k][2].baseline, out[1][2].baseline)
    for i in range(T):
        if i in full_rows(k):
            np.testing.assert_allclose(R[:, i], R_full[:, i], rtol=0, atol=1e-6)
        else:
            np.testing.assert_allclose(R[:, i, i], R_full[:, i, i], rtol=0, atol=1e-6)
            off = np.delete(R[:, i], i, axis=-1)
            assert np.isnan(off).all(), (i, R[:, i])


@pytest.mark.slow
def test_run_stepwise_gives_the_same_rows(runs):
    keys, out = runs
    run, hp, _ = out[2]
    _, whole = run(keys[1], hp)
    _, step = run.run_stepwise(keys[1], hp)
    np.testing.assert_allclose(step.R, whole.R, rtol=0, atol=1e-6)
    assert np.array_equal(np.isnan(step.R), np.isnan(whole.R)) and np.isnan(whole.R).sum() == 2 * (T - 1)


def test_skipped_evaluations_do_not_run(source):
    """Task evaluations counted as the program runs: T baseline + T per full row + 1 per other row."""
    counter = []   # one list: equal sources share compiled programs (and the callback's list)
    for k in (3,):
        counter.clear()
        run = make_run(RunConfig(strategy="none", episodes_per_task=2, monitors=(), evaluate_every=k),
                       Counting(source, counter))
        hp = run.hparams(learning_rate=1e-2)
        jax.block_until_ready(run(jax.random.key(1), hp))
        full = len(full_rows(k))
        assert sum(counter) == T + T * full + (T - full), (k, counter)
        counter.clear()
        jax.block_until_ready(run.run_stepwise(jax.random.key(1), hp))   # one task at a time: the same count
        assert sum(counter) == T + T * full + (T - full), (k, counter)


def test_per_task_traces_are_the_mean_of_each_tasks_updates(runs):
    _, out = runs
    full, per_task = out[1][2].traces, out[3][2].traces
    assert set(full) == set(per_task)
    for name, v in full.items():
        v, p = np.asarray(v), np.asarray(per_task[name])
        assert p.shape == v.shape[:2]
        if name == "finite":
            np.testing.assert_array_equal(p, v.all(axis=-1))
        else:
            np.testing.assert_allclose(p, v.astype(np.float64).mean(axis=-1), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_per_task_traces_average_the_measurements_taken(source):
    """A monitor measured every 2 of 4 updates (NaN between): its summary is the mean of the two measurements."""
    kw = dict(strategy="none", episodes_per_task=4, monitors=(functional_divergence(2),), measure_every=2)
    key = jax.random.key(2)
    res_e = make_run(RunConfig(**kw), source)
    hp = res_e.hparams(learning_rate=1e-2)
    e = np.asarray(res_e(key, hp)[1].traces["functional"])
    t = np.asarray(make_run(RunConfig(**kw, traces="tasks"), source)(key, hp)[1].traces["functional"])
    np.testing.assert_allclose(t, np.nanmean(e, axis=-1), rtol=1e-6)
    assert np.isfinite(t).all()


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="evaluate_every"):
        RunConfig(evaluate_every=0)
    with pytest.raises(ValueError, match="evaluate_every"):
        RunConfig(evaluate_every=2.0)
    with pytest.raises(ValueError, match="traces"):
        RunConfig(traces="episode")


# ----------------------------------------------------------------------------------------------------------------
# One pass over each task (sampling="epoch")
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recording:
    """A source whose loss sends each training batch's inputs to the host as the program runs."""

    base: object
    seen: list = dataclasses.field(compare=False, hash=False)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def loss(self, params, batch, hp):
        jax.debug.callback(lambda x: self.seen.append(np.asarray(x)), batch.x)
        return self.base.loss(params, batch, hp)


def rows_sorted(x):
    x = np.asarray(x).reshape(-1, np.shape(x)[-1])
    return x[np.lexsort(x.T[::-1])]


def test_epoch_sampling_presents_every_training_sample_once_per_task(digits):
    x, y = digits
    stream = permuted_stream(x[:200], y[:200], 2, seed=1, test_fraction=0.2)   # 160 training samples per task
    base = SupervisedSource(MLP(output_dim=10, hidden=(4,)), stream, batch_size=32, eval_size=8, sampling="epoch")
    assert base.updates_per_task == 160 // 32 == 5
    seen = []
    run = make_run(RunConfig(strategy="none", episodes_per_task=5, monitors=()), Recording(base, seen))
    jax.block_until_ready(run(jax.random.key(0), run.hparams(learning_rate=1e-2)))
    assert len(seen) == 10 and all(b.shape == (32, 64) for b in seen)
    for t in range(2):
        np.testing.assert_array_equal(rows_sorted(np.stack(seen[5 * t:5 * t + 5])), rows_sorted(stream.x[t]))
    # a random order per task: the first task's order is not the stream's, nor the second's order of its rows
    first = np.stack(seen[:5]).reshape(160, -1)
    assert not np.array_equal(first, np.asarray(stream.x[0]))


def test_epoch_sampling_drops_the_last_partial_batch_and_refuses_other_update_counts(digits):
    x, y = digits
    stream = permuted_stream(x[:200], y[:200], 2, seed=1, test_fraction=0.2)
    source = SupervisedSource(MLP(output_dim=10, hidden=(4,)), stream, batch_size=50, sampling="epoch")
    assert source.updates_per_task == 3   # 160 // 50: the order's last 10 samples are left out
    with pytest.raises(ValueError, match=r"episodes_per_task must be 3 .*got 4"):
        make_run(RunConfig(strategy="none", episodes_per_task=4, monitors=()), source)
    with pytest.raises(ValueError, match="sampling"):
        SupervisedSource(MLP(output_dim=10, hidden=(4,)), stream, batch_size=50, sampling="epochs")
    assert SupervisedSource(MLP(output_dim=10, hidden=(4,)), stream, batch_size=50).updates_per_task is None
