"""The documentation works: every Python example runs as written, the site builds strictly, and the API reference
covers the public names.

* Every ```python block of docs/**/*.md runs verbatim (README.md's blocks are run and their printed claims checked by
  tests/test_readme.py), the blocks of one file in order in one
  namespace, in a fresh working directory (one test per file, named by its path from the repository root). They are
  end-to-end runs, so they are marked slow: ``pytest -m slow tests/test_docs.py`` (which CI runs) executes every
  file's blocks in order. A block preceded by the line ``<!-- slow -->`` is one the page itself calls long.
* ``mkdocs build --strict`` succeeds, into a temporary folder.
* Every name of ``clloop_jax.__all__`` has its own entry on an API page of the built site.
* The build-time conversion of the docstrings' reST markup (docs/_hooks/rest_docstrings.py) turns roles into links
  or code, double backticks into code spans and ``::`` blocks into fenced code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})(?P<info>[^\n`]*)$")
SLOW_MARK = re.compile(r"^\s*<!--\s*slow\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the first code line in the file
    code: str
    slow: bool


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order (fences of other languages are skipped whole)."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        language = opening["info"].strip().split(" ")[0].strip("{}.").lower()
        end = i + 1
        while end < len(lines):
            closing = FENCE.match(lines[end])
            if closing and closing["ticks"][0] == ticks[0] and len(closing["ticks"]) >= len(ticks) \
                    and not closing["info"].strip():
                break
            end += 1
        if end == len(lines):
            raise ValueError(f"unclosed code fence opened on line {i + 1}")
        if language == "python":
            body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
            slow = i > 0 and bool(SLOW_MARK.match(lines[i - 1]))
            blocks.append(Block(line=i + 2, code=textwrap.dedent("\n".join(body)) + "\n", slow=slow))
        i = end + 1
    return blocks


def documentation_files() -> list[pathlib.Path]:
    return sorted(DOCS.rglob("*.md"))


def example_params():
    params = []
    for path in documentation_files():
        blocks = python_blocks(path.read_text(encoding="utf-8"))
        if not blocks:
            continue
        rel = path.relative_to(ROOT).as_posix()
        params.append(pytest.param(rel, id=rel, marks=pytest.mark.slow))
    return params


def run_blocks(rel: str, blocks: list[Block]) -> tuple[str, str | None]:
    """Runs the blocks in one namespace, up to the first that raises: ``(printed, failure)``, what they printed and
    None, or the line that says which block failed and why, with the output so far."""
    namespace = {"__name__": "__docs_example__"}
    printed = io.StringIO()
    for block in blocks:
        # pad so that a traceback's line numbers are the Markdown file's
        code = compile("\n" * (block.line - 1) + block.code, str(ROOT / rel), "exec", dont_inherit=True)  # no __future__ of ours
        try:
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
        except Exception as error:  # noqa: BLE001 - reported as the test's failure
            return printed.getvalue(), (f"{rel}: the python block at line {block.line} failed "
                                        f"({type(error).__name__}: {error}); printed so far:\n{printed.getvalue()}")
    return printed.getvalue(), None


@pytest.mark.parametrize("rel", example_params())
def test_python_examples_run(rel, tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / rel).read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _, failure = run_blocks(rel, blocks)
    assert failure is None, failure


# -- the collector itself ---------------------------------------------------------------------------------------------

def test_collector_finds_python_blocks_marks_slow_ones_and_skips_other_languages():
    text = textwrap.dedent("""\
        # Page

        ```python
        x = 1
        ```

        ```bash
        python -c "raise SystemExit(1)"
        ```

        <!-- slow -->
        ```python
        y = x + 1
        ```

        - in a list:

            ```python
            z = y + 1
            ```

        ````text
        ```python
        not code
        ```
        ````
        """)
    blocks = python_blocks(text)
    assert [b.code for b in blocks] == ["x = 1\n", "y = x + 1\n", "z = y + 1\n"]
    assert [b.slow for b in blocks] == [False, True, False]
    assert blocks[0].line == 4


def test_failing_example_names_the_file_line_and_output():
    blocks = python_blocks("text\n\n```python\nprint('before')\n```\n\n```python\n1 / 0\n```\n")
    printed, failure = run_blocks("page.md", blocks)
    assert printed == "before\n"
    assert re.match(r"page\.md: the python block at line 8 failed \(ZeroDivisionError.*\nbefore", failure), failure


def test_blocks_of_one_file_share_a_namespace():
    blocks = python_blocks("```python\nvalue = 41\n```\n\n```python\nprint(value + 1)\n```\n")
    assert run_blocks("page.md", blocks) == ("42\n", None)


def test_every_page_with_examples_is_collected():
    ids = {param.values[0] for param in example_params()}
    for path in DOCS.rglob("*.md"):
        if "```python" in path.read_text(encoding="utf-8"):
            assert path.relative_to(ROOT).as_posix() in ids


# -- the site ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``mkdocs build --strict`` into a temporary folder; the folder (the build must succeed)."""
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"})
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"mkdocs build --strict failed after {seconds:.1f} s:\n{done.stderr[-6000:]}"
    assert "WARNING" not in done.stderr, done.stderr[-6000:]
    return out


def api_pages(site: pathlib.Path) -> dict[str, str]:
    pages = {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in (site / "api").rglob("*.html")}
    assert len(pages) >= 12, sorted(pages)
    return pages


def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    for page in ("getting-started", "results", "speed", "guides/runs-and-strategies", "guides/command-line",
                 "guides/devices", "BENCHMARKS", "RELIABILITY"):
        assert (site / page / "index.html").is_file(), page


def test_every_public_name_is_on_an_api_page(site):
    import clloop_jax

    ids = set()
    for text in api_pages(site).values():
        ids |= set(re.findall(r'id="(clloop_jax(?:\.\w+)+)"', text))
    package = pathlib.Path(clloop_jax.__file__).parent
    module_names = {"clloop_jax." + ".".join(p.relative_to(package).with_suffix("").parts)
                    for p in package.rglob("*.py") if p.name != "__init__.py"}
    module_names |= {"clloop_jax." + ".".join(p.parent.relative_to(package).parts)
                     for p in package.rglob("*/__init__.py")}
    documented_modules = ids & module_names
    assert "clloop_jax.run" in documented_modules
    # each public name has an entry of its own, directly under a documented module (where it is defined)
    missing = [name for name in clloop_jax.__all__
               if not any(i.rsplit(".", 1) == [module, name] for i in ids for module in documented_modules)]
    assert not missing, f"public names with no entry on an API page: {missing}"


def test_docstring_markup_is_converted_on_the_api_pages(site):
    pages = api_pages(site)
    outside_literals = {name: re.sub(r"<pre.*?</pre>", "", text, flags=re.S) for name, text in pages.items()}
    for name, text in outside_literals.items():
        assert not re.search(r":(class|func|meth|mod|attr|data):`", text), name
        assert "``" not in text, name
    runs = pages["api/runs/index.html"]
    # make_run's docstring: ":class:`Run`" became a link to the Run class on the same page
    start = runs.index('id="clloop_jax.run.sequential.make_run"')
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]*href="#clloop_jax\.run\.sequential\.Run"[^>]*><code>Run</code></a>',
                     runs[start:start + 20000])
    # and a "~" reference to another page shows only the last name
    taskfree = pages["api/taskfree/index.html"]
    assert re.search(r'href="\.\./[a-z]+/#clloop_jax\.[\w.]+"[^>]*><code>\w+</code></a>', taskfree)
    # "::" literal blocks became fenced code (the loop's module docstring holds one)
    assert "for</span> <span class=\"n\">phase</span>" in html.unescape(runs) or "for phase in scan" in runs


# -- the converter, on its own ----------------------------------------------------------------------------------------

def load_converter():
    spec = importlib.util.spec_from_file_location("rest_docstrings", DOCS / "_hooks" / "rest_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_turns_roles_literals_and_literal_blocks_into_markdown(tmp_path):
    import griffe

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package: see :func:`~pkg.core.build` and :mod:`pkg.core`."""\n')
    (package / "core.py").write_text(textwrap.dedent('''\
        """Core. Typical use::

            thing = build(3)   # ``not converted``, :func:`nor_this`

        After the block, ``code`` and a role split
        over lines, :class:`Thing`, :meth:`Thing.go` and :func:`absent_name`.
        """

        class Thing:
            """A thing."""

            def go(self):
                """Calls :meth:`stop`, then :func:`~pkg.core.build`."""

            def stop(self):
                """Stops."""

        def build(n):
            """Builds a :class:`Thing` of size ``n``.

            Args:
              n: the size (``int``).
            """
            return Thing()
        '''))
    extension = load_converter().RestDocstrings()
    loaded = griffe.load("pkg", search_paths=[str(tmp_path)], extensions=griffe.load_extensions(extension))
    core = loaded["core"]

    def link(identifier, title):
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    assert loaded.docstring.value == f"A package: see {link('pkg.core.build', 'build')} and {link('pkg.core', 'pkg.core')}."
    text = core.docstring.value
    assert text.startswith("Core. Typical use:\n\n```python\nthing = build(3)   # ``not converted``, :func:`nor_this`\n```\n")
    assert "`code`" in text and "``" not in text.split("```\n", 2)[-1]
    assert link("pkg.core.Thing", "Thing") in text and link("pkg.core.Thing.go", "Thing.go") in text
    assert link("absent_name", "absent_name") in text  # unresolved: kept, shown as code by autorefs
    assert core["Thing.go"].docstring.value == (f"Calls {link('pkg.core.Thing.stop', 'stop')}, "
                                                f"then {link('pkg.core.build', 'build')}.")
    assert core["build"].docstring.value.startswith(f"Builds a {link('pkg.core.Thing', 'Thing')} of size `n`.")
    parameters = core["build"].docstring.parse("google")[1].value
    assert parameters[0].name == "n" and parameters[0].description == "the size (`int`)."
