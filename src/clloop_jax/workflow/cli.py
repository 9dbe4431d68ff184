"""The ``clloop`` command line over the typed configurations of :mod:`clloop_jax.workflow.experiment`.

::

    clloop run --out runs/ewc --strategy ewc --seeds 5                # one configuration, seeds vmapped
    clloop compare --out runs/cmp --strategies none,ewc,online_ewc,si,mas,l2
    clloop run --preset tiny --out /tmp/tiny                           # a few seconds after compilation
    clloop run --config runs/ewc/config.json --out runs/again          # the run that folder holds, again
    clloop sweep --out runs/lam --strategy ewc --lam 1,10,100,1000 --select-on 100   # one program for the grid
    clloop run --help                                                  # every field with its default

``--resume`` continues an interrupted run from its last checkpoint (bitwise the result of an uninterrupted one),
``--overwrite`` replaces an existing folder (refused otherwise), ``--quiet`` silences the progress bar (also off when
the output is not a terminal). JAX's persistent compilation cache is on (``--no-cache`` turns it off).

Parsing the arguments needs only tyro and the configuration dataclasses: JAX, the run and the reports are imported
inside the functions that run, so ``clloop --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Optional, Sequence

import tyro

from clloop_jax.workflow.experiment import (MEMORY_STRATEGIES, PRESETS, STRATEGY_NAMES, ExperimentConfig,
                                           describe_preset)
from clloop_jax.workflow.settings import POLICY_STRATEGIES
from clloop_jax.workflow.sweep import SweepArgs, split_grid, sweep_command

__all__ = ["main", "RunArgs", "CompareArgs", "run_command", "check_run", "run_experiment", "compare_command",
           "overview", "devices_option"]

# The experiment's fields appear without prefixes: --strategy, --seeds, --hidden-dim, --num-tasks, ...
_Experiment = tyro.conf.OmitArgPrefixes[ExperimentConfig]

#: What a score means for each kind of source, printed under every summary.
SCORE_MEANING = ("score: 1 = the task's expert, 0 = the zero action (clipped at -1); in the matrix, row 'task i' is "
                 "after training on tasks 1 to i and column 'task j' the score on task j")
RETURN_MEANING = ("score: the mean undiscounted return of an episode in the task; in the matrix, row 'task i' is after "
                  "training on tasks 1 to i and column 'task j' the return on task j")
ACCURACY_MEANING = ("score: accuracy on the task's test images (under the scenario's output mask); in the matrix, row "
                    "'task i' is after training on tasks 1 to i and column 'task j' the accuracy on task j")


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """Train one configuration over several seeds and write a run folder."""

    out: str
    """the run folder to write (required): config.json, summary.md, plots/, checkpoints/, ..."""
    experiment: _Experiment = ExperimentConfig()
    overwrite: bool = False
    """replace the folder if it exists (an existing folder is refused otherwise)"""
    resume: bool = False
    """continue an interrupted run from its last checkpoint"""
    quiet: bool = False
    """print nothing: no progress bar (also off when the output is not a terminal), no summary"""
    no_cache: bool = False
    """leave JAX's persistent compilation cache off (it is kept in ~/.cache/clloop_jax/xla or CLLOOP_JAX_CACHE_DIR)"""
    devices: Optional[int] = None
    """spread the seeds over this many devices (JAX sharding; 0 = every device); unset: the default device"""
    log: str = ""
    """mirror the run live to these trackers, comma-separated: tensorboard (event files in OUT/tensorboard), wandb
    (offline in OUT/wandb unless WANDB_MODE says otherwise); the run folder stays the record"""


@dataclasses.dataclass(frozen=True)
class CompareArgs:
    """Train several strategies on the same seeds: one table, paired differences and one figure."""

    out: str
    """the folder to write (required): one run folder per strategy inside, and the comparison's table and figure"""
    strategies: str = "none,ewc,online_ewc,si,mas,l2"
    """comma-separated strategy names, each optionally with :lambda (for example none,ewc:3,si:30)"""
    experiment: _Experiment = ExperimentConfig()
    overwrite: bool = False
    """replace the folder if it exists (an existing folder is refused otherwise)"""
    resume: bool = False
    """continue an interrupted comparison: finished strategies are kept, an interrupted one resumes"""
    quiet: bool = False
    """print nothing: no progress lines, no table"""
    no_cache: bool = False
    """leave JAX's persistent compilation cache off (it is kept in ~/.cache/clloop_jax/xla or CLLOOP_JAX_CACHE_DIR)"""
    devices: Optional[int] = None
    """spread the seeds over this many devices (JAX sharding; 0 = every device); unset: the default device"""
    log: str = ""
    """mirror each strategy's run live to these trackers, comma-separated: tensorboard (event files in
    OUT/NAME/tensorboard), wandb (offline in OUT/NAME/wandb unless WANDB_MODE says otherwise); the folders stay the
    record"""


def _presets_text() -> str:
    return "\n".join(f"  {name:<8} {describe_preset(name)}" for name in PRESETS)


def _strategies_text() -> str:
    return "  " + ", ".join(STRATEGY_NAMES)


def overview() -> str:
    """The text of ``clloop --help``: the commands, the presets and the strategies."""
    return (f"usage: clloop {{run,compare,sweep}} [--preset NAME | --config FILE] [options]\n\n"
            f"Continual learning in a closed loop: an agent learns a world's tasks one after the other and is scored\n"
            f"on every task after each (--source world), or a classifier learns a labelled benchmark's stream of\n"
            f"tasks (--source mnist, digits or mnist1d; cifar10, cifar100, mnist_idx, fashion_mnist, kmnist or\n"
            f"tinyimagenet from the files in --data-dir; --stream split or permuted; --scenario task, domain or\n"
            f"class), or an actor-critic learns variants of a gymnax environment from reward (--source gymnax).\n\n"
            f"commands:\n"
            f"  run       {RunArgs.__doc__.strip()}\n"
            f"  compare   {CompareArgs.__doc__.strip()}\n"
            f"  sweep     {' '.join(SweepArgs.__doc__.split())}\n\n"
            f"presets (--preset NAME, default: default; the options override its fields):\n{_presets_text()}\n\n"
            f"strategies (run --strategy NAME, compare --strategies NAME[:LAMBDA],...):\n{_strategies_text()}\n\n"
            f"clloop run --help and clloop compare --help list every option with its default.")


def _description(cls) -> str:
    flag = "--strategies NAME[:LAMBDA],..." if cls is CompareArgs else "--strategy NAME"
    grid = ("" if cls is not SweepArgs else "\n\nThe grid: any of --learning-rate, --lam, --gamma, --feedback-weight, "
            "--discount, --gae-lambda, --entropy-coef, --reward-scale with comma-separated values (for example --lam "
            "1,10,100 --learning-rate 1e-3,3e-3); every combination is a point, every point trains every seed.")
    return (f"{' '.join(cls.__doc__.split())}{grid}\n\npresets (--preset NAME before the other options, default: default; the options "
            f"below override its fields):\n{_presets_text()}\n\nInstead of a preset, --config FILE starts from a run "
            f"folder's config.json (that run again), or a JSON, TOML or YAML file of the same settings.\n\n"
            f"strategies ({flag}):"
            f"\n{_strategies_text()}")


def _progress(quiet: bool, total: int, label: str):
    if quiet or not sys.stdout.isatty():
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=label, unit="task")
    return (lambda done, n: bar.update(1)), bar


def _legend(source: str = "world") -> str:
    from clloop_jax.metrics import format_meanings
    meaning = {"world": SCORE_MEANING, "gymnax": RETURN_MEANING}.get(source, ACCURACY_MEANING)
    return meaning + "\n" + format_meanings()


def run_command(args: RunArgs, label: Optional[str] = None):
    """``clloop run``: returns the run's results (leading seed axis)."""
    from clloop_jax.workflow.compilation import enable_compilation_cache
    enable_compilation_cache(enabled=not args.no_cache)
    devices, folder = check_run(args)
    return run_experiment(args, folder, devices, label)


def check_run(args: RunArgs):
    """Every check of ``clloop run`` that needs nothing built, in plain arithmetic: the strategy's options, the
    device count, the memory the run needs against the machine's, the folder. Returns ``(devices, folder)``; the
    folder is only checked (:class:`~clloop_jax.workflow.runs.RunFolder` creates nothing until it is locked)."""
    from clloop_jax.workflow.runs import RunFolder
    from clloop_jax.workflow.trackers import tracker_names
    experiment = args.experiment
    if tracker_names(args.log) and experiment.boundaries != "known":
        raise ValueError(f"--log: a stream with hidden boundaries (--boundaries {experiment.boundaries}) is one "
                         f"compiled program with no step between tasks to log; leave --log unset")
    experiment.train.check_strategy_options()
    devices = devices_option(args.devices)
    estimate = experiment.memory_estimate()
    if estimate is not None:  # a benchmark's or gymnax's run is estimated once built, before it compiles
        estimate.check(what="this run", devices=devices)
    return devices, RunFolder(args.out, overwrite=args.overwrite, resume=args.resume)


def run_experiment(args: RunArgs, folder, devices, label: Optional[str] = None):
    """Builds the run ``args`` describes and trains it into ``folder`` (after :func:`check_run`); prints its
    summary unless ``args.quiet``; returns its results."""
    import json

    from clloop_jax.workflow.execute import execute, execute_taskfree
    from clloop_jax.workflow.trackers import open_trackers
    experiment = args.experiment
    label = label or experiment.train.strategy
    seeds = list(range(experiment.seeds))
    if experiment.boundaries != "known":  # one stream with hidden switches: one program, no per-task steps
        if devices is not None:
            raise ValueError(f"--devices: a stream with hidden boundaries (--boundaries {experiment.boundaries}) "
                             f"runs on the default device")
        run, hp, schedule = experiment.build_taskfree()
        _, results = execute_taskfree(run, hp, schedule, seeds, folder, config=experiment, label=label)
        files = "summary.md, summary.json, detection.json, schedule.json, R_seed*.csv, traces.jsonl, plots/"
    else:
        run, hp = experiment.build()  # the library's own checks, before the folder is touched
        update, bar = _progress(args.quiet, run.source.num_tasks, label)
        try:
            _, results = execute(run, hp, seeds, folder=folder, config=experiment, progress=update, label=label,
                                 devices=devices, trackers=open_trackers(args.log, folder.path))
        finally:
            if bar is not None:
                bar.close()
        files = "summary.md, summary.json, R_seed*.csv, traces.jsonl, plots/, checkpoints/"
    if not args.quiet:
        print(open(folder.file("summary.md")).read())
        if experiment.boundaries != "known":
            found = json.load(open(folder.file("detection.json")))
            for i, seed in enumerate(seeds):
                print(f"seed {seed}: switches detected after {found['delay'][i]} episodes, missed "
                      f"{found['missed'][i]}, false alarms {found['false_alarms'][i]}, consolidations "
                      f"{found['consolidations'][i]}")
        print(_legend(experiment.source) + "\n")
        print(f"wrote {args.out} ({files})", flush=True)
    return results


def devices_option(count: Optional[int]):
    """``--devices``: None keeps the default device, 0 means every device, n the first n."""
    if count is None:
        return None
    import jax

    from clloop_jax.validation import check_int
    count = check_int("--devices", count, min=0, max=jax.device_count())
    return count or jax.device_count()


def _parse_strategies(text: str):
    """``[(name, lam or None)]`` from ``NAME[:LAMBDA],...``; ``ValueError`` naming --strategies and the item."""
    form = f"--strategies must be comma-separated strategy names, each optionally with :LAMBDA (for example " \
           f"none,ewc:3), got {text!r}"
    out = []
    for item in text.split(","):
        name, colon, lam = item.strip().partition(":")
        if not name or (colon and not lam.strip()):
            raise ValueError(form)
        try:
            value = float(lam) if colon else None
        except ValueError:
            raise ValueError(f"--strategies: the strength in {item.strip()!r} is not a number") from None
        out.append((name, value))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies names a strategy twice: {text!r}")
    return out


def _strategy_experiments(base: ExperimentConfig, text: str) -> dict:
    """``{name: experiment}`` of ``--strategies``, each checked; errors name --strategies and the item."""
    out = {}
    for name, lam in _parse_strategies(text):
        try:
            out[name] = base.with_strategy(name, lam)
            if lam is not None:   # a strength for a strategy that has none (gamma is handed out later)
                dataclasses.replace(out[name].train, gamma=None, memory=None).check_strategy_options()
        except (TypeError, ValueError) as err:
            raise ValueError(f"--strategies {name}{'' if lam is None else f':{lam:g}'}: {err}") from None
    return out


def _share(experiments: dict, option: str, takes, who: str, quiet: bool) -> dict:
    """``compare``'s one ``--option`` for every strategy: kept for the strategies that ``takes``, dropped for the
    others (with a line saying so); refused when none takes it."""
    value = getattr(next(iter(experiments.values())).train, option)
    if value is None:
        return experiments
    takers = [name for name in experiments if takes(name)]
    if not takers:
        raise ValueError(f"--{option.replace('_', '-')} {value!r} is used by none of the strategies {', '.join(experiments)} ({who}); "
                         f"leave it unset")
    if not quiet and len(takers) < len(experiments):
        shown = value if isinstance(value, str) else format(value, "g")
        print(f"--{option.replace('_', '-')} {shown} applies to {', '.join(takers)} only (the others have no "
              f"{option})", flush=True)
    return {name: e if name in takers else dataclasses.replace(e, train=dataclasses.replace(e.train, **{option: None}))
            for name, e in experiments.items()}


def compare_command(args: CompareArgs):
    """``clloop compare``: one run folder per strategy, then ``comparison.md`` / ``.json`` and ``comparison.png``."""
    import json

    import numpy as np

    from clloop_jax import report
    from clloop_jax.strategies import get_strategy
    from clloop_jax.workflow.files import jsonable, write_atomic
    from clloop_jax.workflow.trackers import tracker_names
    base = args.experiment
    if base.train.lam is not None:
        raise ValueError(f"--lam {base.train.lam!r}: compare takes each strategy's strength in --strategies "
                         f"NAME:LAMBDA (for example ewc:{base.train.lam:g})")
    experiments = _strategy_experiments(base, args.strategies)
    # one --gamma or --memory for every strategy: it reaches those that have one
    experiments = _share(experiments, "gamma", lambda name: "gamma" in get_strategy(name).hparams._fields,
                         "online_ewc and ewc_budget have it", args.quiet)
    for option in ("memory", "memory_batch"):
        experiments = _share(experiments, option, lambda name: name in MEMORY_STRATEGIES,
                             f"{', '.join(MEMORY_STRATEGIES)} have one", args.quiet)
    experiments = _share(experiments, "memory_policy", lambda name: bool(set(name.split("+")) & set(POLICY_STRATEGIES)),
                         f"{' and '.join(POLICY_STRATEGIES)} have one", args.quiet)
    for experiment in experiments.values():  # every one checked first
        experiment.train.check_strategy_options()
    _check_compare_sizes(experiments, args.devices)
    tracker_names(args.log)   # every tracker's package, before the first strategy runs
    if os.path.isdir(args.out) and os.listdir(args.out) and not (args.overwrite or args.resume):
        raise FileExistsError(f"the folder {args.out!r} exists and is not empty; pass --overwrite or --resume")
    results = {}
    for name, experiment in experiments.items():
        res = run_command(RunArgs(out=os.path.join(args.out, name), experiment=experiment,
                                  overwrite=args.overwrite, resume=args.resume and os.path.exists(
                                      os.path.join(args.out, name, "config.json")),
                                  quiet=True, no_cache=args.no_cache, devices=args.devices, log=args.log),
                          label=name)
        results[name] = (np.asarray(res.R, np.float64), np.asarray(res.baseline, np.float64))
        if not args.quiet:
            print(f"{name}: {report.cell(report.summary(*results[name])['average_performance']['values'])} "
                  f"average performance ({os.path.join(args.out, name)})", flush=True)
    lams = {name: {"lambda": f"{e.strength:g}" if "lam" in get_strategy(name).hparams._fields else "-"}
            for name, e in experiments.items()}
    text = report.summary_table(results, extra=lams)
    if "none" in results and len(results) > 1:
        text += "\n\n" + report.paired_table(results, "none")
    write_atomic(os.path.join(args.out, "comparison.md"), text + "\n")
    write_atomic(os.path.join(args.out, "comparison.json"), json.dumps(jsonable(
        {"summary": {n: report.summary(*r) for n, r in results.items()},
         "paired_vs_none": report.paired_differences(results, "none") if "none" in results and len(results) > 1
         else None, "config": base}), indent=1) + "\n")
    report.plot_comparison(results, os.path.join(args.out, "comparison.png"))
    if not args.quiet:
        print("\n" + text + "\n")
        print(_legend(base.source) + "\n")
        print(f"wrote {args.out} (comparison.md, comparison.json, comparison.png; one run folder per strategy: "
              f"{', '.join(results)})", flush=True)
    return results


def _check_compare_sizes(experiments: dict, devices: Optional[int]) -> None:
    """The device count, and the memory of every strategy's run, checked before the first one starts."""
    used = devices_option(devices)
    for name, experiment in experiments.items():
        estimate = experiment.memory_estimate()
        if estimate is not None:
            estimate.check(what=f"the run of {name}", devices=used)


def _refuse_run_only_options(command: str, argv: Sequence[str]) -> None:
    """``compare`` takes its strategies from --strategies: a --strategy would be silently ignored."""
    if command == "compare" and any(a == "--strategy" or a.startswith("--strategy=") for a in argv):
        raise SystemExit("clloop compare: --strategy is not used by compare; name the strategies in --strategies "
                         "NAME[:LAMBDA],...")


def _split_preset(argv: Sequence[str]):
    """The experiment the other options start from, and the remaining options: ``--preset NAME`` (default: default)
    or ``--config FILE`` (a run folder's config.json, or a JSON, TOML or YAML file of settings)."""
    argv = list(argv)
    found = {}
    for flag in ("--preset", "--config"):
        for i, a in enumerate(argv):
            if a == flag and i + 1 < len(argv):
                found[flag] = argv[i + 1]
                del argv[i:i + 2]
                break
            if a.startswith(flag + "="):
                found[flag] = a.split("=", 1)[1]
                del argv[i]
                break
    if len(found) == 2:
        raise SystemExit("--preset and --config both give the experiment to start from: pass one of them")
    if "--config" in found:
        from clloop_jax.workflow.experiment import load_experiment
        try:
            return load_experiment(found["--config"]), argv
        except (ValueError, TypeError, OSError, ImportError) as err:
            raise SystemExit(f"--config: {err}") from None
    preset = found.get("--preset", "default")
    if preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {list(PRESETS)}, got {preset!r}")
    return PRESETS[preset], argv


def _expected_errors() -> tuple:
    """The errors reported as one line: bad input, a refused folder, a diverged run (whose class is looked up only
    when the run's module was loaded: otherwise no run can have raised it)."""
    errors = (ValueError, TypeError, OSError, ImportError)
    loop = sys.modules.get("clloop_jax.run")
    return errors + ((loop.NonFiniteError,) if loop is not None else ())


def main(argv: Optional[Sequence[str]] = None):
    """Entry point of ``clloop`` and ``python -m clloop_jax``. Output piped into a reader that stops early
    (``clloop --help | head``) ends the command quietly with 141 (128 + SIGPIPE), as other command lines do."""
    try:
        return _main(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


def _main(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in _COMMANDS:
        print(overview())
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    command, rest = argv[0], argv[1:]
    experiment, rest = _split_preset(rest)
    _refuse_run_only_options(command, rest)
    cls = _COMMANDS[command]
    previous = _stop_on_sigterm()
    try:
        grid, rest = split_grid(rest) if command == "sweep" and "-h" not in rest and "--help" not in rest else ((), rest)
        args = tyro.cli(cls, args=rest, default=cls(out="", experiment=experiment), prog=f"clloop {command}",
                        description=_description(cls), config=(tyro.conf.FlagCreatePairsOff,))
        if not args.out:
            raise SystemExit(f"clloop {command}: --out is required")
        if command == "sweep":
            sweep_command(args, grid)
        else:
            (run_command if command == "run" else compare_command)(args)
    except BrokenPipeError:  # an OSError, but not the command's: the reader of its output stopped (see main)
        raise
    except _expected_errors() as err:  # evaluated once an error is raised
        raise SystemExit(f"clloop {command}: {err}") from None
    except KeyboardInterrupt as err:   # SIGINT / SIGTERM: one line, and 128 + the signal's number
        from clloop_jax.workflow.execute import RunInterrupted, resume_command
        if isinstance(err, RunInterrupted):
            print(f"{err}; resume with: {resume_command('clloop', argv)}", file=sys.stderr, flush=True)
            return err.exit_code
        print(f"clloop {command}: interrupted", file=sys.stderr, flush=True)
        return 128 + getattr(err, "signum", 2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


_COMMANDS = {"run": RunArgs, "compare": CompareArgs, "sweep": SweepArgs}


def _stop_on_sigterm():
    """SIGTERM outside a run's task loop (which stops between tasks) raises KeyboardInterrupt, so that ``main``
    ends with one line and 143 instead of dying without a word; returns the previous handler (None off the main
    thread)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        err = KeyboardInterrupt()
        err.signum = signum
        raise err
    return signal.signal(signal.SIGTERM, interrupt)
