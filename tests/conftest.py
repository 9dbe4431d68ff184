"""Shared test settings: a deterministic hypothesis profile (and a thorough one for local runs) and fast
compilation.

Compilation dominates these small tests, so XLA's optimisation passes are switched off for the whole session
(``jax_disable_most_optimizations``): compile time roughly halves. Semantics do not change; every numerical
comparison in the suite has a float32 tolerance, and paths compared with each other are compiled the same way.
"""
import os

import jax
import pytest
from hypothesis import settings

# Commands run in-process (``cli.main([...])``) would turn JAX's persistent compilation cache on in the test worker,
# and every later compilation there would be written to it: XLA's CPU client has crashed the worker (a segfault in
# ``put_executable_and_time``) serialising one of the suite's programs. The suite leaves the cache off; the tests of
# the cache itself set the variable as they need. Set before the worker processes start, so they inherit it.
os.environ.setdefault("CLLOOP_JAX_NO_CACHE", "1")

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25, print_blob=True)
# Locally, many more examples: `python -m pytest tests/test_invalid_inputs.py --hypothesis-profile=thorough`.
settings.register_profile("thorough", deadline=None, max_examples=200, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations"), jax.config.jax_enable_compilation_cache
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_enable_compilation_cache", False)   # see CLLOOP_JAX_NO_CACHE above
    yield
    jax.config.update("jax_disable_most_optimizations", previous[0])
    jax.config.update("jax_enable_compilation_cache", previous[1])


# ----------------------------------------------------------------------------------------------------------------
# Shared tiny builders: equal configurations are built, and their programs compiled, once per test process
# ----------------------------------------------------------------------------------------------------------------

#: A 2-modality world at sizes that compile in seconds (8-dim observations, 4 actions, 4-step episodes, 3 tasks).
TINY_WORLD = {"observation_dim": 8, "action_dim": 4, "num_modalities": 2, "latent_dim": 4, "episode_length": 4}
#: The CrossModalModel that fits it.
TINY_MODEL = {"input_dim": 8, "hidden_dim": 8, "output_dim": 4, "num_modalities": 2, "num_heads": 2}
TINY_TASKS = 3


def tiny_model(**overrides):
    """The tiny world's agent; ``feedback_dim`` unset (the loop pairs it with the world's) unless given."""
    from clloop_jax import CrossModalModel
    return CrossModalModel(**{**TINY_MODEL, **overrides})


def tiny_world():
    """(model, environment): the tiny world and its agent, paired (the model reads the world's feedback)."""
    from clloop_jax import Environment
    env = Environment(**TINY_WORLD)
    return tiny_model(feedback_dim=env.feedback_dim), env


@pytest.fixture(scope="session")
def tiny_cycle():
    """The documented notebook example (EWC 0.5, feedback weight 0.3, learning rate 1e-3) run as written on the
    tiny world, 3 tasks x 10 episodes, verbose: ``(loop, metrics, printed)``. Tests that train the loop further
    change its state (they check properties that do not depend on how far it was trained)."""
    import contextlib
    import io

    from clloop_jax import ContinualLearningLoop
    model, env = tiny_world()
    loop = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-3, ewc_lambda=0.5,
                                 feedback_weight=0.3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = loop.continual_learning_cycle(num_tasks=TINY_TASKS, episodes_per_task=10, verbose=True)
    return loop, metrics, out.getvalue()


def digits_source(digits, classes_per_task: int, scenario: str, **source_options):
    """A labelled source over the digits ``(x, y)``: the split stream of ``classes_per_task`` classes per task
    (seed 0) in ``scenario``, a tiny MLP (one hidden layer of 8), batches of 16 unless ``source_options`` say
    otherwise (they go to ``SupervisedSource``)."""
    from clloop_jax.data.streams import split_stream
    from clloop_jax.model import MLP
    from clloop_jax.sources.supervised import SupervisedSource
    x, y = digits
    stream = split_stream(x, y, classes_per_task=classes_per_task, seed=0, scenario=scenario)
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream,
                            **{"batch_size": 16, **source_options})


@pytest.fixture(scope="session")
def digits():
    """The scikit-learn digits (x, y), loaded once per test process."""
    from clloop_jax.data.loaders import load_digits_data
    return load_digits_data()
