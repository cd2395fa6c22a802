"""Every python code block in README.md and docs/, and every docstring example, runs, so the
docs cannot rot."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import matplotlib
import pytest

import occlusion_probe

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text()), start=1):
            found.append((f"{document.relative_to(ROOT)}#{number}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_there_are_code_blocks() -> None:
    assert len(BLOCKS) >= 15
    assert any(name.startswith("README.md") for name, _ in BLOCKS)


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_code_block_runs(
    name: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": "__docs__"})


def test_bad_input_table_names_real_tests() -> None:
    table = (ROOT / "docs" / "bad-input.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", table))
    assert len(named) >= 20
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert named <= defined, sorted(named - defined)


def test_docs_link_only_existing_pages() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def _modules() -> list[str]:
    names = [occlusion_probe.__name__]
    for info in pkgutil.walk_packages(
        occlusion_probe.__path__, prefix=f"{occlusion_probe.__name__}."
    ):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _doctests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    # The finder only searches objects defined in the module itself, so an object that other
    # modules import (or re-export) has its examples run once, with its own module's globals.
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, module_name) if test.examples]


def test_docstrings_have_examples() -> None:
    assert len(MODULES) > 5
    total = sum(len(test.examples) for name in MODULES for test in _doctests(name))
    assert total > 0


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(
    module_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS, verbose=False)
    failed = sum(runner.run(test, out=report.write).failed for test in _doctests(module_name))
    assert failed == 0, report.getvalue()
