"""Argument checks shared by every public function and constructor of the library.

Each check names the argument, says what was expected and what was given, and raises before anything is traced::

    check_int("num_tasks", 0, min=1)        # ValueError: num_tasks must be an integer >= 1, got int 0
    check_float("confidence", "0.9", min=0, max=1, open_min=True, open_max=True)
                                            # TypeError: confidence must be a number in (0, 1), got str '0.9'
    check_key("key", 0)                     # TypeError: key must be a jax.random.key(...), got int 0;
                                            #            use jax.random.key(0)

Conventions:

* A value of the wrong kind raises :class:`ArgumentTypeError`, a ``TypeError`` that is also a ``ValueError`` (so
  code that caught the library's earlier ``ValueError`` keeps working); a value of the right kind outside its range
  raises ``ValueError``.
* Integers: Python and NumPy integers and concrete 0-d integer arrays; ``bool`` is refused (``True`` is not a count).
* Numbers: Python and NumPy reals and real arrays (concrete ones are checked elementwise); ``bool``, strings,
  complex numbers, ``None`` and containers are refused. Finite means finite in float32 as well (the library
  computes in float32: ``1e179`` would become ``inf``). NaN is never accepted.
* Traced values (inside ``jit``/``vmap``) cannot be inspected: only their dtype and shape are checked; the values
  are the caller's responsibility.
* Seeds: ``jax.random.key(seed)`` keeps the low 32 bits of a seed unless ``jax_enable_x64`` is on (then 63 bits),
  so two seeds that differ above those bits would give the same key; :func:`check_seed` refuses them.

Every check returns the value it accepted (converted where that is stated), so it can be used inline.
"""

from clloop_jax.validation.describe import (ArgumentTypeError, FLOAT32_MAX, describe, is_traced, is_int,
                                            positive_int)  # noqa: F401
from clloop_jax.validation.numbers import (check_int, check_float, check_bool, check_array, check_number_tree,
                                           check_seed)  # noqa: F401
from clloop_jax.validation.objects import (check_key, check_callable, check_instance, check_methods, check_choice,
                                           check_axis, check_path)  # noqa: F401

__all__ = ["ArgumentTypeError", "FLOAT32_MAX", "describe", "is_traced", "is_int", "positive_int", "check_int",
           "check_float", "check_bool", "check_array", "check_number_tree", "check_seed", "check_key", "check_callable",
           "check_instance", "check_methods", "check_choice", "check_axis", "check_path"]
