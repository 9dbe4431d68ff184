"""The package's shape: rooms of a readable size, no private member used across modules, no public name lost."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "clloop_jax"
#: "About 450 lines": a module past this holds more than one concept and is split.
MAX_LINES = 470
#: Private names of the standard library and of JAX that the package may use (NamedTuple's API, jit's cache count).
FOREIGN_PRIVATE = {"_replace", "_fields", "_asdict", "_make", "_cache_size"}


def modules():
    return sorted(SRC.rglob("*.py"))


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_over_the_size_limit():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in modules()}
    assert len(sizes) > 40
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def private_definitions(tree: ast.Module) -> set:
    """Private names a module defines: top-level names, and attributes and methods of its classes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    names.add(target.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def cross_module_private_uses(sources: dict) -> list:
    """``module: line: name`` for each private name imported from, or used as an attribute of something from,
    another module of the package (a name the using module does not define itself)."""
    trees = {m: ast.parse(text) for m, text in sources.items()}
    own = {m: private_definitions(t) for m, t in trees.items()}
    uses = []
    for m, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("clloop_jax")):
                uses += [f"{m}:{node.lineno}: import {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if node.attr in own[m] or node.attr in FOREIGN_PRIVATE:
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                uses.append(f"{m}:{node.lineno}: {ast.unparse(node)}")
    return uses


def test_no_private_member_is_used_across_modules():
    sources = {module_name(p): p.read_text() for p in modules()}
    assert cross_module_private_uses(sources) == []


def test_the_private_member_check_finds_what_it_looks_for():
    sources = {
        "clloop_jax.a": "class Run:\n    def _init(self):\n        return self._keys()\n    def _keys(self):\n        return 1\n",
        "clloop_jax.b": "from clloop_jax.a import Run, _helper\n\ndef go(run):\n    return run._init() + run._replace(x=1)\n",
    }
    assert cross_module_private_uses(sources) == ["clloop_jax.b:1: import _helper", "clloop_jax.b:4: run._init"]


def test_no_public_name_is_lost():
    """Every name public in the package or in any module of it (as recorded in ``tests/public_names.json``, the
    listing of ``tools/public_names.py``) is public somewhere in the package now."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "public_names.py"), "--compare",
                          str(ROOT / "tests" / "public_names.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "; lost: 0" in out.stdout


@pytest.mark.parametrize("package", ["run", "sources", "data", "taskfree", "rl", "importance"])
def test_each_subpackage_gathers_its_modules_public_names(package):
    import importlib
    pkg = importlib.import_module(f"clloop_jax.{package}")
    assert pkg.__all__ and all(getattr(pkg, n) is not None for n in pkg.__all__)
    assert len(set(pkg.__all__)) == len(pkg.__all__)
