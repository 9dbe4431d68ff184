"""The shared argument checks: what each accepts, what it refuses, and that every message names the argument,
the expectation and the value given."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax.importance.fisher import Gaussian
from clloop_jax.validation import (FLOAT32_MAX, ArgumentTypeError, check_array, check_axis, check_bool, check_callable,
                                   check_choice, check_float, check_instance, check_int, check_key, check_methods,
                                   check_number_tree, check_path, check_seed, describe)

NAME = "some_argument"


def _raises(error, fn, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(args[0]), message  # every check takes the argument's name first
    return message


# ----------------------------------------------------------------------------------------------------------------
# The error type
# ----------------------------------------------------------------------------------------------------------------


def test_type_errors_are_also_value_errors():
    # Code written against the earlier ValueError-only checks keeps catching them.
    with pytest.raises(TypeError) as info:
        check_int(NAME, "3")
    assert isinstance(info.value, ValueError) and isinstance(info.value, ArgumentTypeError)
    with pytest.raises(ValueError) as info:
        check_int(NAME, -1, min=0)
    assert not isinstance(info.value, TypeError)


# ----------------------------------------------------------------------------------------------------------------
# Integers
# ----------------------------------------------------------------------------------------------------------------


@given(st.integers(-10 ** 6, 10 ** 6), st.sampled_from([int, np.int8, np.int32, np.int64, np.uint16]))
def test_check_int_accepts_python_and_numpy_integers_in_range(value, kind):
    try:
        v = kind(value)
    except OverflowError:
        return
    if int(v) != value:  # narrow NumPy types wrap; only compare representable values
        return
    out = check_int(NAME, v, min=-10 ** 6, max=10 ** 6)
    assert out == value and type(out) is int


@given(st.integers(), st.integers(-100, 100), st.integers(0, 100))
def test_check_int_range_is_inclusive_and_named(value, lo, width):
    hi = lo + width
    if lo <= value <= hi:
        assert check_int(NAME, value, min=lo, max=hi) == value
    else:
        msg = _raises(ValueError, check_int, NAME, value, min=lo, max=hi)
        assert f"in [{lo}, {hi}]" in msg and f"got int {value}" in msg


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, np.float32(3), "3", None, [3], 3j,
                                   jnp.array(2.0), jnp.array([1, 2])])
def test_check_int_refuses_non_integers_with_a_type_error(value):
    msg = _raises(TypeError, check_int, NAME, value, min=1)
    assert "must be an integer >= 1" in msg and "got" in msg


def test_check_int_messages_and_options():
    assert check_int(NAME, None, allow_none=True) is None
    assert check_int(NAME, np.array(5)) == 5 and check_int(NAME, jnp.array(5, jnp.int32)) == 5
    assert "pass 2" in _raises(TypeError, check_int, NAME, 2.0)
    assert "got bool True" in _raises(TypeError, check_int, NAME, True)
    assert "or None" in _raises(TypeError, check_int, NAME, "x", allow_none=True)
    # A traced count is refused: sizes must be known before tracing.
    with pytest.raises(TypeError, match=f"{NAME}.*concrete"):
        jax.jit(lambda n: check_int(NAME, n))(3)


# ----------------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------------


def test_check_seed_bounds_follow_jax_key_width():
    assert check_seed(NAME, 0) == 0 and check_seed(NAME, 2 ** 32 - 1) == 2 ** 32 - 1
    assert check_seed(NAME, np.uint32(7)) == 7
    for bad in (-1, 2 ** 32, 2 ** 64, 10 ** 30):
        msg = _raises(ValueError, check_seed, NAME, bad)
        assert "[0, 2**32)" in msg and "32 bits" in msg
    # The reason for the bound: without x64, seeds 2**32 apart give the same key.
    np.testing.assert_array_equal(jax.random.key_data(jax.random.key(2 ** 32 + 5)),
                                  jax.random.key_data(jax.random.key(5)))
    with jax.enable_x64(True):
        assert check_seed(NAME, 2 ** 32 + 5) == 2 ** 32 + 5
        msg = _raises(ValueError, check_seed, NAME, 2 ** 63)
        assert "[0, 2**63)" in msg
    for bad in (1.0, "8", True, None):
        _raises(TypeError, check_seed, NAME, bad)


# ----------------------------------------------------------------------------------------------------------------
# Floats
# ----------------------------------------------------------------------------------------------------------------


@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_check_float_range_and_finiteness(value):
    ok = math.isfinite(value) and abs(value) <= FLOAT32_MAX and 0 < value <= 1
    if ok:
        assert check_float(NAME, value, min=0, max=1, open_min=True) == value
    else:
        msg = _raises(ValueError, check_float, NAME, value, min=0, max=1, open_min=True)
        assert "in (0, 1]" in msg


@given(st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=6))
def test_check_float_checks_arrays_elementwise(values):
    arr = np.asarray(values, np.float32)
    if (arr >= 0).all():
        assert check_float(NAME, jnp.asarray(arr), min=0) is not None
    else:
        _raises(ValueError, check_float, NAME, jnp.asarray(arr), min=0)


@pytest.mark.parametrize("value,hint", [
    (True, "bool"), ("0.5", "string"), (1j, "complex"), (None, None), ([0.1, 0.2], "jnp.asarray"),
    (np.array([1 + 2j]), "complex"), (np.array([True]), "boolean"), (jax.random.key(0), "key"),
    (object(), None), ({"a": 1.0}, None),
])
def test_check_float_refuses_non_numbers_with_a_type_error(value, hint):
    msg = _raises(TypeError, check_float, NAME, value)
    assert "must be a finite number" in msg
    if hint:
        assert hint in msg


def test_check_float_options():
    assert check_float(NAME, None, allow_none=True) is None
    assert check_float(NAME, -math.inf, finite=False) == -math.inf
    _raises(ValueError, check_float, NAME, math.nan, finite=False)
    assert "overflows float32" in _raises(ValueError, check_float, NAME, 1e179)
    _raises(ValueError, check_float, NAME, np.zeros((0,)))
    _raises(TypeError, check_float, NAME, np.ones(3), scalar=True)
    assert check_float(NAME, np.float16(0.5), max=1) == 0.5
    assert check_float(NAME, 3, min=3) == 3  # integers are numbers


def test_check_float_skips_traced_values_but_checks_their_dtype():
    @jax.jit
    def f(x):
        check_float(NAME, x, min=0)  # a traced -1 cannot be seen: no error
        return x * 2

    assert float(f(-1.0)) == -2.0
    assert jax.vmap(lambda x: check_float(NAME, x, min=0))(jnp.array([-1.0, 1.0])).shape == (2,)
    with pytest.raises(TypeError, match=NAME):
        jax.jit(lambda x: check_float(NAME, x))(jnp.array(1j))


# ----------------------------------------------------------------------------------------------------------------
# Number trees
# ----------------------------------------------------------------------------------------------------------------


def test_check_number_tree_names_the_leaf_and_converts_lists():
    tree = {"optimizer": {"learning_rate": [1e-3, 1e-2]}, "strategy": (1.0, {"gamma": 0.5})}
    out = check_number_tree("hp", tree, min=0)
    assert isinstance(out["optimizer"]["learning_rate"], jax.Array)
    np.testing.assert_allclose(out["optimizer"]["learning_rate"], [1e-3, 1e-2])
    # A tuple holding a container stays structure; a flat tuple of numbers is one leaf like a list.
    assert out["strategy"][1]["gamma"] == 0.5
    msg = _raises(ValueError, check_number_tree, "hp", {"optimizer": {"learning_rate": -1.0}}, min=0)
    assert msg.startswith("hp.optimizer.learning_rate must be")
    msg = _raises(TypeError, check_number_tree, "hp", {"a": None})
    assert msg.startswith("hp.a must be") and "None" in msg
    msg = _raises(TypeError, check_number_tree, "hp", {"a": "0.5"})
    assert msg.startswith("hp.a must be") and "string" in msg
    msg = _raises(TypeError, check_number_tree, "hp", {"a": [1e-3, 1e-2]}, lists="refuse")
    assert "jnp.asarray" in msg
    _raises(TypeError, check_number_tree, "hp", {"a": [[1.0], [1.0, 2.0]]})  # ragged
    _raises(TypeError, check_number_tree, "hp", None)
    _raises(ValueError, check_number_tree, "hp", {})
    assert "hp[0]" in _raises(ValueError, check_number_tree, "hp", [math.inf, 1.0, {"x": 1.0}])


def test_check_number_tree_on_a_named_tuple_and_under_vmap():
    from typing import NamedTuple

    class HP(NamedTuple):
        lr: object = 1e-3
        lam: object = 1.0

    assert _raises(ValueError, check_number_tree, "hp", HP(lam=math.inf)).startswith("hp.lam")
    swept = HP(lam=jnp.array([0.0, -1.0]))
    _raises(ValueError, check_number_tree, "hp", swept, min=0)
    # Traced leaves (one sweep value per vmapped call) are skipped.
    out = jax.vmap(lambda hp: check_number_tree("hp", hp, min=0).lam, in_axes=(HP(None, 0),))(swept)
    np.testing.assert_array_equal(out, [0.0, -1.0])


@given(st.recursive(st.floats(0, 1e6), lambda children: st.dictionaries(
    st.text("abc", min_size=1, max_size=3), children, min_size=1, max_size=3), max_leaves=8))
def test_check_number_tree_accepts_valid_trees_unchanged(tree):
    out = check_number_tree("hp", tree, min=0)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    assert jax.tree.leaves(out) == jax.tree.leaves(tree)


# ----------------------------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------------------------


def test_check_key():
    key = jax.random.key(3)
    assert check_key(NAME, key) is key
    legacy = check_key(NAME, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(jax.random.key_data(legacy), jax.random.key_data(key))
    msg = _raises(TypeError, check_key, NAME, 0)
    assert "expected" not in msg and "a single jax.random.key(...), got int 0; use jax.random.key(0)" in msg
    assert "jax.random.split" in _raises(TypeError, check_key, NAME, 5, ndim=1)
    assert "pass keys[0]" in _raises(ValueError, check_key, NAME, jax.random.split(key, 3))
    assert check_key(NAME, jax.random.split(key, 3), ndim=1).shape == (3,)
    for bad in (None, "key", 1.5, np.zeros(2, np.float32), jnp.zeros(3, jnp.uint32), True):
        _raises(TypeError, check_key, NAME, bad)
    # Traced keys pass (checked by dtype and shape).
    out = jax.jit(lambda k: jax.random.key_data(check_key(NAME, k)))(key)
    np.testing.assert_array_equal(out, jax.random.key_data(key))


# ----------------------------------------------------------------------------------------------------------------
# Objects, choices, axes
# ----------------------------------------------------------------------------------------------------------------


def test_check_instance_and_methods_explain_a_class_passed_for_an_instance():
    g = Gaussian()
    assert check_instance(NAME, g, Gaussian) is g
    msg = _raises(TypeError, check_instance, NAME, Gaussian, Gaussian)
    assert msg == f"{NAME} must be an instance of Gaussian, got the class Gaussian; pass an instance Gaussian()"
    assert "got int 3" in _raises(TypeError, check_instance, NAME, 3, (Gaussian, str))
    assert check_methods(NAME, g, ["log_prob", "sample"]) is g
    assert "pass an instance Gaussian()" in _raises(TypeError, check_methods, NAME, Gaussian, ["log_prob"])
    assert "lacks ['sample']" in _raises(TypeError, check_methods, NAME, object(), ["sample"])


def test_check_callable_choice_bool_axis_path():
    assert check_callable(NAME, len) is len
    assert "not its name" in _raises(TypeError, check_callable, NAME, "loss")
    assert "(params) -> scalar" in _raises(TypeError, check_callable, NAME, None, signature="(params) -> scalar")
    _raises(TypeError, check_callable, NAME, Gaussian)  # a class is not the function asked for
    assert check_choice(NAME, "ewc", ("ewc", "si")) == "ewc"
    assert "did you mean 'ewc'" in _raises(ValueError, check_choice, NAME, "ecw", ("ewc", "si"))
    _raises(ValueError, check_choice, NAME, np.array([1, 2]), ("ewc",))
    _raises(ValueError, check_choice, NAME, 1, (True, "x"))  # 1 == True, but 1 is not the choice True
    assert check_bool(NAME, np.bool_(True)) is True
    _raises(TypeError, check_bool, NAME, 1)
    assert check_axis(NAME, -1, 3) == -1 and check_axis(NAME, np.int64(2), 3) == 2
    assert check_axis(NAME, None, 3) is None
    assert check_axis(NAME, (0, 2), 3, allow_tuple=True) == (0, 2)
    _raises(ValueError, check_axis, NAME, (0, -3), 3, allow_tuple=True)
    assert "has 2 axes" in _raises(ValueError, check_axis, NAME, 2, 2)
    _raises(TypeError, check_axis, NAME, 1.5, 2)
    assert check_path(NAME, "/tmp") == "/tmp"
    _raises(TypeError, check_path, NAME, 3)


def test_check_array():
    assert isinstance(check_array(NAME, [[1, 2], [3, 4]], ndim=2), np.ndarray)
    x = jnp.ones(3)
    assert check_array(NAME, x) is x
    for bad in (None, "abc", [[1], [1, 2]], np.array(["a"]), {"a": 1}, jax.random.key(0)):
        _raises(TypeError, check_array, NAME, bad)
    _raises(ValueError, check_array, NAME, np.ones(3), ndim=2)
    _raises(TypeError, check_array, NAME, np.ones(3), kind="integer")
    _raises(TypeError, check_array, NAME, np.array([True]))
    assert check_array(NAME, np.array([True]), allow_bool=True).dtype == bool


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.complex_numbers(),
                 st.lists(st.integers(), max_size=3), st.binary(max_size=3)))
def test_every_refusal_names_argument_expectation_and_value(value):
    """Whatever the check and whatever the value, a refusal says who, what was expected, and what came."""
    checks = [lambda v: check_int(NAME, v, min=0, max=5),
              lambda v: check_float(NAME, v, min=0, max=1, scalar=True),
              lambda v: check_key(NAME, v), lambda v: check_seed(NAME, v), lambda v: check_bool(NAME, v),
              lambda v: check_choice(NAME, v, ("a", "b")), lambda v: check_callable(NAME, v),
              lambda v: check_axis(NAME, v, 2)]
    for check in checks:
        try:
            check(value)
        except (TypeError, ValueError) as err:
            msg = str(err)
            assert msg.startswith(f"{NAME} must be "), msg
            assert f"got {describe(value)}" in msg, msg


def test_describe():
    assert describe(0) == "int 0" and describe("0.9") == "str '0.9'" and describe(None) == "None"
    assert describe(Gaussian) == "the class Gaussian"
    assert describe(np.float32(2)) == "numpy.float32 2.0" and describe(np.int64(-1)) == "numpy.int64 -1"
    assert describe(jnp.arange(3)) == "int32 array of shape (3,) [0, 1, 2]"
    assert describe(jnp.zeros((100,))) == "float32 array of shape (100,)"
    assert "key" in describe(jax.random.key(0))
    assert len(describe("x" * 1000)) < 60
