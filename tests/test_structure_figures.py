"""The structure figures (tests/support/structure.py): what they count, on small trees built here."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from support.environment import ROOT
from support.structure import LONG_FUNCTION, WIDE_CLASS, import_cycles, measure, report


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")
    return root


def _branches(count: int) -> str:
    body = "".join(f"    if x == {n}:\n        return {n}\n" for n in range(count))
    return f"def branchy(x):\n{body}    return -1\n"


def test_counts_long_functions_wide_classes_long_modules_and_complex_blocks(tmp_path: Path) -> None:
    long_body = "".join(f"    a{n} = {n}\n" for n in range(LONG_FUNCTION))
    methods = "".join(f"    def m{n}(self):\n        return {n}\n" for n in range(WIDE_CLASS + 1))
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/long.py": f"def long():\n{long_body}    return 0\n\ndef short():\n    return 1\n",
            "pkg/wide.py": f"class Wide:\n{methods}\nclass Narrow:\n    def m(self):\n        return 0\n",
            "pkg/branchy.py": _branches(20) + "\n" + _branches(19).replace("branchy", "fine"),
            "pkg/big.py": "x = 1\n" * 601,
        },
    )
    figures = measure(root)
    assert [(b.where, b.figure) for b in figures.long_functions] == [
        ("pkg/long.py:1 long", LONG_FUNCTION + 2)
    ]
    assert [(b.where, b.figure) for b in figures.wide_classes] == [
        ("pkg/wide.py:1 Wide", WIDE_CLASS + 1)
    ]
    assert [(b.where, b.figure) for b in figures.long_modules] == [("pkg/big.py", 601)]
    # radon scores 1 + one per branch: 20 ifs rank D (21), 19 stay C (20).
    assert [(b.where, b.figure) for b in figures.complex_blocks] == [
        ("pkg/branchy.py:1 branchy", 21)
    ]
    text = report(figures)
    assert "functions over 80 lines: 1" in text
    assert "import cycles: 0" in text


def test_import_cycles_follow_the_imports_that_run_at_load_and_those_mypy_reads(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n__version__ = '1'\n",
            "pkg/a.py": "from pkg import b\nA = 1\n",
            # Importing a submodule through the package is not a dependency on its __init__;
            # importing a name defined there is.
            "pkg/b.py": "from pkg import __version__\n",
            "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import D\n",
            "pkg/d.py": "from .c import *\nD = 1\n",
            "pkg/e.py": "def later():\n    from pkg.f import F\n",
            "pkg/f.py": "from pkg.e import later\nF = 1\n",
        },
    )
    assert import_cycles(root) == [["pkg", "pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
    assert import_cycles(root, typing=False) == [["pkg", "pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycle() -> None:
    # TYPE_CHECKING imports count: decision once reached the engine that way, and the engine
    # and the pack reached back into decision. Imports inside functions do not.
    assert import_cycles(ROOT / "src") == []
