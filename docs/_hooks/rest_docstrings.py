"""A griffe extension that turns the library's reST docstring markup into Markdown when the site is built.

The docstrings are written for Sphinx: cross-reference roles (``:class:`~clloop_jax.run.sequential.Run```, ``:func:``,
``:meth:``, ``:mod:``, ``:attr:``, ``:data:``), double-backtick literals and ``::`` literal blocks. Before
mkdocstrings parses a docstring (Google style), this extension rewrites its text:

* a role becomes an autorefs cross-reference to the object's canonical path (``~`` shows only the last name). The
  reference is optional: when its target is not rendered anywhere on the site it shows as inline code, without a
  link and without a warning;
* a double-backtick literal becomes a single-backtick code span;
* a paragraph ending in ``::`` ends in ``:`` and the indented block after it becomes a fenced code block (``python``
  when the block parses as Python, ``text`` otherwise), left exactly as written.

Names are resolved as Sphinx resolves them: a dotted path as given, otherwise in the scope of the documented object
(its members, then its parents', imports included), and finally, if one object in the package has that name, that
object.
"""

from __future__ import annotations

import ast
import html
import re
import textwrap
from typing import Any, Dict, Iterator, List, Optional

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|obj|exc|const):`(?P<body>[^`]+)`")
LITERAL = re.compile(r"``(?P<code>[^`]|[^`].*?[^`])``", re.S)
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _fence(block: List[str], indent: int) -> List[str]:
    body = textwrap.dedent("\n".join(block)).strip("\n")
    try:
        ast.parse(body)
        language = "python"
    except SyntaxError:
        language = "text"
    pad = " " * indent
    return [pad + "```" + language, *[(pad + line) if line else "" for line in body.split("\n")], pad + "```"]


class RestDocstrings(griffe.Extension):
    """Rewrites every docstring of a loaded package from reST markup to Markdown (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._by_name: Dict[str, List[str]] = {}
        self.converted = 0

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = list(_walk(pkg))
        for obj in objects:
            self._by_name.setdefault(obj.name, []).append(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = self.convert(obj.docstring.value, obj)
                self.converted += 1

    # -- names -------------------------------------------------------------------------------------------------------

    def _canonical(self, obj: griffe.Object, path: str) -> Optional[str]:
        try:
            found = obj.modules_collection.get_member(path)
        except (KeyError, ValueError, AttributeError):
            return None
        try:
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return found.target_path if found.is_alias else None

    def resolve(self, target: str, obj: griffe.Object) -> str:
        """The canonical path of ``target`` as seen from ``obj`` (``target`` itself when it cannot be resolved)."""
        target = target.lstrip(".")
        direct = self._canonical(obj, target)
        if direct is not None:
            return direct
        first, _, rest = target.partition(".")
        try:
            base = obj.resolve(first)
        except (griffe.NameResolutionError, AttributeError):
            base = None
        if base is not None:
            full = f"{base}.{rest}" if rest else base
            return self._canonical(obj, full) or full
        candidates = self._by_name.get(target.rsplit(".", 1)[-1], [])
        matching = [path for path in candidates if path.endswith("." + target) or path == target]
        if len(matching) > 1:  # several: those of the documented object's own module, if that settles it
            module = obj.module.path + "."
            matching = [path for path in matching if path.startswith(module)]
        if len(matching) == 1:
            return matching[0]
        return target

    def reference(self, role: str, body: str, obj: griffe.Object) -> str:
        """An optional autorefs reference for one role: a link where the target is on the site, code otherwise."""
        explicit = EXPLICIT_TITLE.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body
            title = None
        short = target.startswith("~")
        target = target.lstrip("~")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
        identifier = self.resolve(target, obj)
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    # -- text --------------------------------------------------------------------------------------------------------

    def inline(self, text: str, obj: griffe.Object) -> str:
        text = ROLE.sub(lambda m: self.reference(m["role"], m["body"], obj), text)
        return LITERAL.sub(lambda m: f"`{m['code']}`", text)

    def convert(self, text: str, obj: griffe.Object) -> str:
        """The Markdown form of one reST docstring, ``obj`` giving the scope in which names are resolved."""
        lines = text.split("\n")
        out: List[str] = []
        prose: List[str] = []  # converted together, so that a role or a literal may span a line break

        def flush() -> None:
            if prose:
                out.extend(self.inline("\n".join(prose), obj).split("\n"))
                prose.clear()

        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.rstrip()
            if stripped.endswith("::") and not stripped.endswith(":::"):
                # the paragraph's text, then the literal block indented under it
                indent = _indent(line)
                j = i + 1
                while j < len(lines) and not lines[j].strip():
                    j += 1
                block: List[str] = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
                    block.append(lines[j])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                if block:
                    head = stripped[:-2].rstrip()
                    if head.strip():
                        prose.append(head + ":")
                    flush()
                    out.append("")
                    out.extend(_fence(block, indent))
                    out.append("")
                    i = j
                    continue
            prose.append(line)
            i += 1
        flush()
        return "\n".join(out)
