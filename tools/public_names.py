"""The public names of clloop_jax: the package's own and every module's, as JSON.

Run it on two checkouts and compare, to see that a rearrangement of the modules lost no public name::

    PYTHONPATH=OLD/src python tools/public_names.py > before.json
    PYTHONPATH=src python tools/public_names.py --compare before.json

A module's public names are its ``__all__`` and the names its own top-level statements define that do not start
with ``_``. ``--compare`` prints the names that were public before and are public nowhere now, and
exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import pkgutil
import sys


def defined_names(module) -> set:
    """The names a module's own top-level statements define (functions, classes, assignments), not ``_private``."""
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def public_names() -> dict:
    """``{"package": [...], "modules": {module: [names]}}`` for the clloop_jax on the import path."""
    import clloop_jax

    modules = {}
    for info in pkgutil.walk_packages(clloop_jax.__path__, "clloop_jax."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        modules[info.name] = sorted(set(getattr(module, "__all__", ())) | defined_names(module))
    return {"package": sorted(clloop_jax.__all__), "modules": modules}


def lost(before: dict, after: dict) -> dict:
    """Names public before and public in no module (nor the package) after, by the module they were in."""
    now = set(after["package"]) | {n for names in after["modules"].values() for n in names}
    gone = {"package": sorted(set(before["package"]) - set(after["package"]))}
    for module, names in before["modules"].items():
        missing = sorted(set(names) - now)
        if missing:
            gone[module] = missing
    return {k: v for k, v in gone.items() if v}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="BEFORE.json", help="compare with an earlier listing")
    args = parser.parse_args(argv)
    names = public_names()
    if args.compare is None:
        json.dump(names, sys.stdout, indent=1)
        print()
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    gone = lost(before, names)
    count = lambda d: len(d["package"]) + sum(len(v) for v in d["modules"].values())  # noqa: E731
    print(f"public names before: {count(before)} in {len(before['modules'])} modules; "
          f"now: {count(names)} in {len(names['modules'])} modules; lost: {sum(len(v) for v in gone.values())}")
    for module, missing in gone.items():
        print(f"  {module}: {', '.join(missing)}")
    return 1 if gone else 0


if __name__ == "__main__":
    sys.exit(main())
