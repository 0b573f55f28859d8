"""The package keeps its layers: import-linter's contracts (pyproject.toml) hold, and no module imports another
that imports it back, however far round (an import made only for type annotations loads nothing and is left out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
from radon.complexity import cc_visit

REPO = Path(__file__).resolve().parents[2]


def import_cycles(package: str) -> list[list[str]]:
    """Every group of modules of ``package`` that import one another in a circle (Tarjan's strongly
    connected components of the import graph, groups of two or more)."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_the_import_contracts_hold() -> None:
    """lint-imports keeps every contract of pyproject.toml (layers, the foundation, the stand-in)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"  # import-linter's console script, in the test venv
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_of_the_job_imports_itself_round_a_circle() -> None:
    """No import cycle anywhere in job/."""
    assert import_cycles("job") == []


def test_the_cycle_finder_finds_a_circle(tmp_path: Path, monkeypatch: object) -> None:
    """The finder itself sees a circle of three modules (so an empty answer above means something)."""
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle import b\n")
    (package / "b.py").write_text("from circle import c\n")
    (package / "c.py").write_text("import circle.a\n")
    (package / "d.py").write_text("import circle.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert import_cycles("circle") == [["circle.a", "circle.b", "circle.c"]]
    finally:
        sys.path.remove(str(tmp_path))


MAX_MODULE_LINES = 600
MAX_COMPLEXITY = 25


def test_no_module_of_the_job_is_over_600_lines() -> None:
    """A module longer than that holds more than one job: split it where its jobs part."""
    long = {str(path.relative_to(REPO)): n for path in sorted((REPO / "job").rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_of_the_job_is_over_complexity_25() -> None:
    """radon's cyclomatic complexity of every function and method in job/ is at most 25."""
    complex_ = {}
    for path in sorted((REPO / "job").rglob("*.py")):
        for block in cc_visit(path.read_text(encoding="utf-8")):
            for item in [block, *getattr(block, "methods", [])]:
                if item.complexity > MAX_COMPLEXITY:
                    complex_[f"{path.relative_to(REPO)}:{item.name}"] = item.complexity
    assert complex_ == {}
