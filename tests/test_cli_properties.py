"""Every option of ``clloop run`` and ``clloop compare``, found by walking the configuration dataclasses (so an
option added later is covered), given invalid values of its kind (negative, zero where >= 1 is needed, NaN, inf,
1e30, values that overflow or vanish in float32, non-numbers, empty, sizes no machine holds) and valid ones, on
the command line in this process with the run itself replaced by a stub that records what would run:

* no traceback: every refusal is a ``SystemExit``, code 2 from the parser or one line naming the option;
* no silent acceptance: an invalid value never reaches the run;
* a valid value does reach it.

``python -m pytest tests/test_cli_properties.py -s`` prints the counts (``CLLOOP_CLI_EXAMPLES=10`` for more examples).
"""
import contextlib
import dataclasses
import io
import math
import os
import struct
import typing
from collections import Counter

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clloop_jax.strategies import get_strategy
from clloop_jax.workflow import cli
from clloop_jax.workflow.experiment import (BOUNDARY_MODES, FISHER_VARIANTS, MONITOR_NAMES, PRESETS, SOURCES, STRATEGY_NAMES,
                                           DataConfig, GymnaxConfig)
from clloop_jax.workflow.settings import LR_SCHEDULES, TRACE_MODES
from clloop_jax.workflow.taskfree import TaskFreeConfig

TINY = PRESETS["tiny"]
COUNTS = Counter()


class Reached(Exception):
    """Raised by the stub in place of the run: the command accepted its arguments."""


def options(cls, default):
    """``{field name: type}`` of every option of the command line ``cls`` stands for (nested dataclasses, whose
    options appear without a prefix, walked through)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            out.update(options(type(value), value))
        else:
            out[f.name] = hints[f.name]
    return out


RUN_OPTIONS = options(cli.RunArgs, cli.RunArgs(out="", experiment=TINY))
COMPARE_OPTIONS = options(cli.CompareArgs, cli.CompareArgs(out="", experiment=TINY))

# ----- what is valid: the documented ranges ----------------------------------------------------------------------

SIZES = {"observation_dim", "action_dim", "num_modalities", "latent_dim", "episode_length", "num_tasks", "hidden_dim",
         "num_heads", "episodes_per_task", "num_envs", "seeds"}
FLOAT32_MAX = 3.4028234663852886e38
FLOATS = {"learning_rate": (0.0, math.inf, True), "lam": (0.0, math.inf, False), "gamma": (0.0, 1.0, False),
          "feedback_weight": (0.0, math.inf, False)}
CHOICES = {"strategy": STRATEGY_NAMES, "fisher_variant": FISHER_VARIANTS, "boundaries": BOUNDARY_MODES,
           "traces": TRACE_MODES, "lr_schedule": LR_SCHEDULES}
FLAGS = {"overwrite", "resume", "quiet", "no_cache"}
OTHERS = {"out", "devices", "world_seed", "monitors", "strategies", "memory", "memory_batch", "memory_policy",
          "max_grad_norm", "source", "log", "evaluate_every", "strategy_hparams"}
#: Options of the parts the base experiment (the tiny world with known boundaries) does not use: a value is accepted
#: only at its default (any other is refused as unused), so the rule is "equals the default" for every one of them.
UNUSED = {f.name: getattr(part, f.name) for part in (DataConfig(), GymnaxConfig(), TaskFreeConfig())
          for f in dataclasses.fields(part)}
HAS_LAM = {n for n in STRATEGY_NAMES if "lam" in get_strategy(n).hparams._fields}


def as_float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def valid_number(name, text) -> bool:
    try:
        x = float(text)
    except ValueError:
        return False
    low, high, open_low = FLOATS[name]
    if not (math.isfinite(x) and abs(x) <= FLOAT32_MAX and x <= high):
        return False
    return as_float32(x) > low if open_low else x >= low


def valid_size(name, n: int):
    """True or False; None between 16 and 10**12, where whether the machine holds the run depends on the machine
    (only a clean outcome is asked for there)."""
    if 16 < n < 10 ** 12:
        return None if (name != "hidden_dim" or n % TINY.model.num_heads == 0) and name != "num_heads" else False
    if not 1 <= n <= 16:
        return False
    if name == "hidden_dim":
        return n % TINY.model.num_heads == 0
    if name == "num_heads":
        return TINY.model.hidden_dim % n == 0
    return True


def flag(name):
    return "--" + name.replace("_", "-")


NOT_NUMBERS = ["", "abc", "nan", "inf", "-inf", "1e30", "1.5", "0x10", "one", "--", "1,5", "None"]
HUGE = st.integers(10 ** 12, 10 ** 18)


@st.composite
def integer_text(draw, name):
    """``(text, value or None)``: an integer's text, or something that is none."""
    n = draw(st.one_of(st.integers(-3, 16), st.integers(-10 ** 20, 10 ** 20), HUGE))
    if draw(st.integers(0, 3)) == 0:
        text = draw(st.sampled_from(NOT_NUMBERS))
        try:
            return text, int(text)
        except ValueError:
            return text, None
    return str(n), n


@st.composite
def float_text(draw):
    special = st.sampled_from(["nan", "inf", "-inf", "1e30", "-1e30", "1e39", "-1e39", "1e-50", "-0.0", "0", "1",
                               "", "abc", "1e", "0.5", "1.0", "2"])
    number = st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr)
    return draw(st.one_of(special, number, st.floats(-10, 10).map(repr), st.floats(0, 1).map(repr)))


@st.composite
def example(draw, command, name, tmp):
    """``(argv tokens, valid)`` for the option ``name`` of ``command``."""
    opt = flag(name)
    assert name in (RUN_OPTIONS if command == "run" else COMPARE_OPTIONS)
    if name in SIZES:
        text, n = draw(integer_text(name))
        return [opt, text], False if n is None else valid_size(name, n)
    if name in FLOATS:
        text = draw(float_text())
        prefix = ["--strategy", "online_ewc"] if name == "gamma" and command == "run" else []
        valid = valid_number(name, text) and not (name == "lam" and command == "compare")
        return prefix + [opt, text], valid       # compare takes every strength in --strategies
    if name in CHOICES:
        text = draw(st.one_of(st.sampled_from(CHOICES[name]), st.text(max_size=12),
                              st.sampled_from(["EWC", "ewc ", "exact,sampled", ""])))
        return [opt, text], text in CHOICES[name] and not (name == "strategy" and command == "compare")
    if name in FLAGS:
        extra = draw(st.sampled_from([[], [], ["yes"], ["1"], ["false"]]))
        return [opt] + extra, not extra
    if name in UNUSED:
        default = UNUSED[name]
        if isinstance(default, bool):
            extra = draw(st.sampled_from([[], ["yes"]]))
            return [opt] + extra, False                      # the flag sets True, away from the default
        if isinstance(default, tuple):
            widths = draw(st.lists(st.sampled_from(["400", "0", "-1", "32", "abc", "1e9"]), max_size=3))
            return [opt, *widths], widths == [str(w) for w in default]
        pool = [str(default), repr(default), "0", "-1", "1", "abc", "", "nan", "1e30", "3", "[{}]", "permuted",
                "task", "Pendulum-v1", "0.5"]
        text = draw(st.sampled_from(pool))
        if isinstance(default, str):
            return [opt, text], text == default
        try:
            value = type(default)(text)
        except ValueError:
            return [opt, text], False
        return [opt, text], value == default and (not isinstance(default, int) or text.lstrip("-").isdigit())
    if name == "source":
        text = draw(st.one_of(st.sampled_from(SOURCES), st.sampled_from(["", "cifar", "World", "gym"])))
        return [opt, text], text == "world"                 # the tiny preset's world options are refused elsewhere
    if name == "memory_policy":
        text = draw(st.sampled_from(["reservoir", "balanced", "None", "", "ring", "Balanced"]))
        if command == "compare":                             # neither none nor online_ewc keeps a memory: unset only
            return [opt, text], text == "None"
        return ["--strategy", "replay", opt, text], text in ("reservoir", "balanced", "None")
    if name == "memory_batch":
        text, n = draw(integer_text(name))
        if command == "compare":                             # none and online_ewc draw from no memory: unset only
            return [opt, text], text == "None"
        if text == "None":
            return ["--strategy", "replay", opt, text], True
        if n is None or n < 1:
            return ["--strategy", "replay", opt, text], False
        return ["--strategy", "replay", opt, text], True if n <= 16 else None
    if name == "memory":
        text, n = draw(integer_text(name))
        if command == "compare":                             # neither none nor online_ewc keeps a memory: unset only
            return [opt, text], text == "None"
        if text == "None":                                   # unset: the default memory
            return ["--strategy", "replay", opt, text], True
        if n is None or n < 1:
            return ["--strategy", "replay", opt, text], False
        return ["--strategy", "replay", opt, text], True if n <= 16 else (None if n < 10 ** 12 else False)
    if name == "max_grad_norm":
        text = draw(st.one_of(float_text(), st.just("None")))
        if text == "None":
            return [opt, text], True
        try:
            x = float(text)
        except ValueError:
            return [opt, text], False
        return [opt, text], math.isfinite(x) and 0 < x <= FLOAT32_MAX and as_float32(x) > 0
    if name == "strategy_hparams":  # name=number for a hyperparameter the strategy has (not lam or gamma)
        text = draw(st.sampled_from(["alpha=0.5", "alpha=2", "alpha=-1", "alpha=nan", "alpha", "zeta=1", "lam=3",
                                     "=1", ""]))
        if command == "compare":                             # neither none nor online_ewc has alpha
            return [opt, text], False
        return ["--strategy", "replay", opt, text], text in ("alpha=0.5", "alpha=2")
    if name == "evaluate_every":   # any count >= 1: beyond the number of tasks, only the last row is full
        text, n = draw(integer_text(name))
        return [opt, text], n is not None and n >= 1
    if name == "world_seed":
        n = draw(st.one_of(st.integers(-5, 20), st.integers(2 ** 32 - 2, 2 ** 32 + 2), HUGE,
                           st.integers(-10 ** 20, 0)))
        text = draw(st.sampled_from([str(n), str(n), str(n), "1.5", "abc", ""]))
        return [opt, text], text == str(n) and 0 <= n < 2 ** 32
    if name == "devices":
        count = jax.device_count()
        text = draw(st.sampled_from(["-1", "0", "1", str(count), str(count + 1), "100", "1.5", "abc", "", "None",
                                     str(10 ** 30)]))
        return [opt, text], text == "None" or (text.lstrip("-").isdigit() and 0 <= int(text) <= count)
    if name == "monitors":
        names = draw(st.lists(st.one_of(st.sampled_from(MONITOR_NAMES), st.sampled_from(["", "nonsense", "Fisher"])),
                              max_size=4))
        return [opt, *names], all(n in MONITOR_NAMES for n in names) and len(set(names)) == len(names)
    if name == "out":
        choice = draw(st.sampled_from(["fresh", "fresh", "empty", "file", "under_file"]))
        path = {"fresh": str(tmp / f"out{draw(st.integers(0, 10 ** 9))}"), "empty": "", "file": str(tmp / "a_file"),
                "under_file": str(tmp / "a_file" / "run")}[choice]
        return [opt, path], choice == "fresh"
    if name == "strategies":
        items = draw(st.lists(st.tuples(
            st.one_of(st.sampled_from(STRATEGY_NAMES), st.sampled_from(["", "ewk", "EWC", " "])),
            st.one_of(st.none(), float_text())), min_size=1, max_size=4))
        text = ",".join(n if lam is None else f"{n}:{lam}" for n, lam in items)
        names = [n.strip() for n, _ in items]
        valid = (len(set(names)) == len(names)
                 and all(n in STRATEGY_NAMES and (lam is None or (n in HAS_LAM and valid_number("lam", lam)))
                         for n, lam in items))
        return [opt, text], valid
    if name == "log":   # comma-separated tracker names, each once (their packages are installed for the tests)
        names = draw(st.lists(st.one_of(st.sampled_from(["tensorboard", "wandb", " wandb"]),
                                        st.sampled_from(["", "tb", "TensorBoard", "mlflow"])), max_size=3))
        text, stripped = ",".join(names), [n.strip() for n in names]
        return [opt, text], text == "" or (set(stripped) <= {"tensorboard", "wandb"}
                                           and len(set(stripped)) == len(stripped))
    raise AssertionError(f"{opt}: no rule says which values are valid; add one here")  # pragma: no cover


def base_argv(command, tmp):
    out = str(tmp / "base_out")
    if command == "run":
        return ["run", "--preset", "tiny", "--out", out]
    return ["compare", "--preset", "tiny", "--out", out, "--strategies", "none,online_ewc"]


def call(argv, monkeypatch):
    """``(outcome, detail)``: 'reached' (detail: the arguments the run would get), 'exit 2' (the parser's message),
    'line' (a one-line exit message), or 'traceback', 'bad exit', 'returned' (each a failure)."""
    seen = []

    def stub(args, folder, devices, label=None):
        seen.append(args)
        raise Reached

    monkeypatch.setattr(cli, "run_experiment", stub)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except Reached:
            return "reached", seen[0]
        except SystemExit as done:
            if done.code == 2:
                return "exit 2", err.getvalue()
            return ("line" if isinstance(done.code, str) and "\n" not in done.code.strip() else "bad exit"), \
                str(done.code)
        except BaseException as exc:  # noqa: BLE001 - exactly what must not happen
            return "traceback", f"{type(exc).__name__}: {exc}"
    return "returned", ""


def names_option(message, name, value):
    """Whether a one-line refusal names the option (its flag or its field name) or, for --out, the path given."""
    words = {flag(name), name} | ({value} if name == "out" and value else set())
    return any(w in message for w in words)


def problem(command, name, tmp, monkeypatch, data):
    """Runs one drawn example of ``command`` with option ``name``; what is wrong with its outcome (a traceback, an
    unclean exit, a valid value refused, an invalid one reaching the run, a refusal that does not name the option),
    or None when it is right."""
    if name == "preset":   # read before the other options, and only its first occurrence
        preset = data.draw(st.one_of(st.sampled_from(sorted(PRESETS)), st.text(max_size=8)), label="preset")
        argv_extra, valid = ["--preset", preset], preset in PRESETS
        argv = base_argv(command, tmp)
        argv[1:3] = argv_extra
    else:
        argv_extra, valid = data.draw(example(command, name, tmp), label="option")
        argv = base_argv(command, tmp) + argv_extra
    outcome, detail = call(argv, monkeypatch)
    COUNTS[f"{command} examples"] += 1
    COUNTS[f"{command} {'acceptances' if outcome == 'reached' else 'refusals'}"] += 1
    COUNTS[f"{command} {outcome}"] += 1
    if outcome not in ("reached", "exit 2", "line"):
        return f"{argv}: {outcome} {detail}"
    if valid is None:
        COUNTS[f"{command} sizes the machine decides"] += 1
        return None
    if valid:
        return None if outcome == "reached" else f"{argv} is valid but was refused: {detail}"
    if outcome == "reached":
        return f"{argv} is invalid but reached the run (silent acceptance)"
    if outcome == "line" and not names_option(detail, name, argv_extra[-1]):
        return f"{argv}: the refusal does not name {flag(name)}: {detail}"
    return None


@pytest.fixture
def tmp(tmp_path):
    """A place with an empty folder (which a run reuses, ``--resume`` starts and ``--overwrite`` replaces) for the
    base command's --out, and a file."""
    (tmp_path / "base_out").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


#: Examples per option: 4 in the default suite (about 20 s for the two commands); CLLOOP_CLI_EXAMPLES=10 or more for a
#: deeper search.
SETTINGS = settings(max_examples=int(os.environ.get("CLLOOP_CLI_EXAMPLES", "4")), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(RUN_OPTIONS) + ["preset"])
@SETTINGS
@given(data=st.data())
def test_run_refuses_every_invalid_value_cleanly_and_accepts_every_valid_one(name, tmp, monkeypatch, data):
    wrong = problem("run", name, tmp, monkeypatch, data)
    assert wrong is None, wrong


@pytest.mark.parametrize("name", sorted(COMPARE_OPTIONS) + ["preset"])
@SETTINGS
@given(data=st.data())
def test_compare_refuses_every_invalid_value_cleanly_and_accepts_every_valid_one(name, tmp, monkeypatch, data):
    wrong = problem("compare", name, tmp, monkeypatch, data)
    assert wrong is None, wrong


def test_every_option_has_a_rule_and_the_counts_are_reported():
    """Each option the dataclasses give is one the rules above know (a new one must say what is valid), and the
    properties above ran: their counts are printed."""
    known = SIZES | set(FLOATS) | set(CHOICES) | FLAGS | OTHERS | set(UNUSED)
    assert set(RUN_OPTIONS) <= known and set(COMPARE_OPTIONS) <= known, (set(RUN_OPTIONS) | set(COMPARE_OPTIONS))
    assert set(COMPARE_OPTIONS) - set(RUN_OPTIONS) == {"strategies"}
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items())))
