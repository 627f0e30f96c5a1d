"""The house rules a newcomer relies on, checked on the source tree itself.

- a folder holds at most 15 modules and a module at most 500 lines, so the folder
  says where a change belongs and a file can be read in one sitting;
- no import cycle between terracube modules, counting imports inside functions and
  under `TYPE_CHECKING` (a cycle hidden there is still two modules that need each other);
- `zarr.core` (private in zarr-python) is imported by one adapter module only;
- dependencies point one way: catalog <- pipeline <- model, workflows on top;
- a modality is named only in the registry: no code outside it compares a name
  with a modality or band-group literal;
- no source file is ignored by git: a `build/` pattern once hid `workflows/build/repair.py`
  from every commit, and a clean clone failed on the import.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from terracube.catalog.registry import BAND_GROUPS, MODALITIES

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("catalog", "pipeline", "model", "workflows")
SOURCE_DIRS = (*STAGES, "tests", "benchmarks")
MAX_MODULES = 15
MAX_LINES = 500
LAYER = {"catalog": 0, "pipeline": 1, "model": 2, "workflows": 3}
REGISTRY = ROOT / "catalog" / "registry.py"


def _python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["terracube", *parts])


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import target in the file (module level, in functions, TYPE_CHECKING)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _python_files(*STAGES)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_dependencies_point_one_way() -> None:
    wrong = [
        f"{source} imports {target}"
        for source, targets in _import_graph().items()
        for target in targets
        if LAYER[target.split(".")[1]] > LAYER[source.split(".")[1]]
    ]
    assert wrong == []


def test_folders_hold_at_most_15_modules() -> None:
    folders = {p.parent for p in _python_files(*SOURCE_DIRS)}
    crowded = {
        str(folder.relative_to(ROOT)): n
        for folder in folders
        if (n := len(list(folder.glob("*.py")))) > MAX_MODULES
    }
    assert crowded == {}


def test_modules_are_at_most_500_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _python_files(*SOURCE_DIRS)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_zarr_core_is_used_by_one_adapter_only() -> None:
    users = {
        str(p.relative_to(ROOT))
        for p in _python_files(*SOURCE_DIRS)
        if any(t == "zarr.core" or t.startswith("zarr.core.") for t, _ in _imports(p))
    }
    assert users <= {"pipeline/corpus/zarr_adapter.py"}


def _name_literals() -> re.Pattern[str]:
    names = sorted({*MODALITIES, *BAND_GROUPS}, key=len, reverse=True)
    quoted = "|".join(re.escape(n) for n in names)
    return re.compile(rf"""(==|!=)\s*["']({quoted})["']|["']({quoted})["']\s*(==|!=)""")


def test_no_modality_dispatch_outside_the_registry() -> None:
    pattern = _name_literals()
    assert pattern.search('if name == "worldcover":')  # the check can fail
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in _python_files(*STAGES)
        if p != REGISTRY and "world" not in p.relative_to(ROOT).parts[1:2]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_no_source_file_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [str(p.relative_to(ROOT)) for p in _python_files(*SOURCE_DIRS)]
    paths += [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")]
    found = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    ignored = [line for line in found.stdout.splitlines() if "__pycache__" not in line]
    assert not ignored, f"git ignores these source files; fix .gitignore: {ignored}"
