"""The architecture as rules a tool keeps: the import-linter contracts of pyproject.toml (the wings,
the rooms of workers/), no import cycle among the project's modules, one argument parser."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dmd_types", "dmd_model", "stream", "workers", "configs")

grimp = pytest.importorskip("grimp", reason="import-linter (and its grimp) is a test dependency: pip install -e .[dev]")


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports is not installed: pip install -e .[dev]")
    return [exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"]


def test_the_import_contracts_of_pyproject_are_kept() -> None:
    out = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_module_of_the_project_imports_itself_through_others() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "a.w")):
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


def test_only_the_command_line_parses_arguments() -> None:
    """argparse is used in workers/cli/ alone (bench/ and scripts/ are tools of their own)."""
    users = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if "argparse" in names:
                    users.append(path.relative_to(ROOT).as_posix())
    assert users and all(u.startswith("workers/cli/") for u in users), users


def test_workers_holds_rooms_and_a_few_shared_modules() -> None:
    top = sorted(p.stem for p in (ROOT / "workers").glob("*.py") if p.stem != "__init__")
    rooms = sorted(p.name for p in (ROOT / "workers").iterdir() if (p / "__init__.py").is_file())
    assert rooms == ["asr", "capture", "cli", "infer", "view", "web"]
    assert top == ["metrics", "pipeline", "settings", "wiring"]
