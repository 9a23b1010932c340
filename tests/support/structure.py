"""Structure figures for a source tree: the numbers issue 14 tracks, recomputable by anyone.

Run from the project's root: ``.venv/bin/python tests/support/structure.py src`` prints every
figure and the blocks behind it. The tests import the functions: tests/test_structure_figures.py.

- complexity: radon's cyclomatic complexity per block (function, method, class), rank D or worse
  means a score above 20, as ``radon cc -s -n D src`` lists them;
- long functions: an AST walk, ``end_lineno - lineno + 1`` of every def (decorators excluded);
- wide classes: methods defined directly in a class body;
- long modules: physical lines of a file;
- import cycles: module-level imports between the package's own modules, those under
  ``if TYPE_CHECKING:`` included (imports inside functions are left out: they run after both
  modules are loaded, and are how a module reaches a heavier one only when it needs it).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LONG_FUNCTION = 80
WIDE_CLASS = 20
LONG_MODULE = 600
RANK_D = 20  # radon: A 1-5, B 6-10, C 11-20, D 21-30, E 31-40, F 41+


@dataclass(frozen=True)
class Block:
    """One function, method, class or module and the figure it is listed for."""

    where: str  # path:line name
    figure: int


@dataclass(frozen=True)
class Figures:
    """Every figure for one tree; each list holds the offending blocks, worst first."""

    complex_blocks: list[Block]
    long_functions: list[Block]
    wide_classes: list[Block]
    long_modules: list[Block]
    cycles: list[list[str]]


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    """Each ``.py`` file under ``root`` (a ``src`` folder) with its dotted module name."""
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _defs(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every def in a module with its qualified name (Class.method, outer.inner)."""

    def walk(
        node: ast.AST, prefix: str
    ) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield prefix + child.name, child
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    return walk(tree, "")


def _classes(tree: ast.AST) -> Iterator[ast.ClassDef]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef))


def _complexity(source: str, label: str) -> list[Block]:
    # radon is a dev dependency; imported here so the AST figures need nothing beyond the stdlib.
    from radon.complexity import cc_visit

    blocks = []
    for block in cc_visit(source):
        if block.complexity > RANK_D:
            name = block.fullname if hasattr(block, "fullname") else block.name
            blocks.append(Block(f"{label}:{block.lineno} {name}", block.complexity))
    return blocks


def _worst_first(blocks: list[Block]) -> list[Block]:
    return sorted(blocks, key=lambda block: (-block.figure, block.where))


def measure(root: Path, *, complexity: bool = True) -> Figures:
    """The figures for the modules under ``root``."""
    complex_blocks: list[Block] = []
    long_functions: list[Block] = []
    wide_classes: list[Block] = []
    long_modules: list[Block] = []
    for _, path in modules(root):
        source = path.read_text(encoding="utf-8")
        label = path.relative_to(root).as_posix()
        tree = ast.parse(source, filename=str(path))
        lines = len(source.splitlines())
        if lines > LONG_MODULE:
            long_modules.append(Block(label, lines))
        for name, node in _defs(tree):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > LONG_FUNCTION:
                long_functions.append(Block(f"{label}:{node.lineno} {name}", length))
        for cls in _classes(tree):
            methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in cls.body)
            if methods > WIDE_CLASS:
                wide_classes.append(Block(f"{label}:{cls.lineno} {cls.name}", methods))
        if complexity:
            complex_blocks.extend(_complexity(source, label))
    return Figures(
        complex_blocks=_worst_first(complex_blocks),
        long_functions=_worst_first(long_functions),
        wide_classes=_worst_first(wide_classes),
        long_modules=_worst_first(long_modules),
        cycles=import_cycles(root),
    )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(
    tree: ast.Module, *, typing: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is first imported (not inside defs).

    With ``typing``, those under ``if TYPE_CHECKING:`` count too: mypy follows them, and a cycle
    through them is still two modules that cannot be understood one without the other.
    """
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if typing or not _is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, ast.With):
            pending.extend(node.body)


def import_graph(root: Path, *, typing: bool = True) -> dict[str, set[str]]:
    """Module → the package's own modules it imports at load time.

    ``from package import name`` points at ``package.name`` when that is a module, and at the
    package (its ``__init__``) otherwise: importing ``__version__`` from the facade depends on the
    facade, importing a submodule through it does not.
    """
    found = dict(modules(root))
    packages = {name for name, path in found.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        base = name if name in packages else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _module_level_imports(tree, typing=typing):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in found)
                continue
            target = node.module or ""
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join([*anchor, *([target] if target else [])])
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in found:
                    edges.add(submodule)
                elif target in found:
                    edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(root: Path, *, typing: bool = True) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, in name order."""
    graph = import_graph(root, typing=typing)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def report(figures: Figures) -> str:
    """The figures as text: a summary line per figure, then the blocks behind it."""
    out = []
    sections: list[tuple[str, list[Block]]] = [
        (f"blocks of rank D or worse (cc > {RANK_D})", figures.complex_blocks),
        (f"functions over {LONG_FUNCTION} lines", figures.long_functions),
        (f"classes with more than {WIDE_CLASS} methods", figures.wide_classes),
        (f"modules over {LONG_MODULE} lines", figures.long_modules),
    ]
    for title, blocks in sections:
        out.append(f"{title}: {len(blocks)}")
        out.extend(f"    {block.figure:4d}  {block.where}" for block in blocks)
    out.append(f"import cycles: {len(figures.cycles)}")
    out.extend("    " + " <-> ".join(group) for group in figures.cycles)
    return "\n".join(out)


if __name__ == "__main__":
    print(report(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "src"))))
