"""The shape of the package: no import cycle among its modules, and a reader that stays light.

The reader is the process keepalived starts and kills within a second; what it imports is start-up
latency and resident memory on every node, so psutil, filelock and python-daemon belong to the
worker alone (they are imported after the fork).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "notify_launcher"


def _imports(path: Path) -> set[str]:
    """notify_launcher modules `path` imports at run time: at module level or deferred inside a
    function alike (a deferred import still ties the two modules together), but not the ones
    under `if TYPE_CHECKING:`, which only the type checker reads."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("notify_launcher"):
            if node.module == "notify_launcher":
                found |= {f"notify_launcher.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("notify_launcher.")}
    return found


def test_no_import_cycle() -> None:
    graph = {f"notify_launcher.{p.stem}": _imports(p) for p in PACKAGE.glob("*.py")}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_reader_imports_nothing_heavy() -> None:
    code = ("import sys, notify_launcher.cli, notify_launcher.reader, notify_launcher.detach; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('psutil', 'filelock', 'daemon'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "", f"the reader's import closure pulls in: {out}"


def test_no_sys_path_surgery() -> None:
    """What is importable comes from configuration (the package, setup.cfg's `pythonpath = tests`
    for the test support, PYTHONPATH=tests for the demo and the benchmarks), never from code that
    edits sys.path."""
    root = PACKAGE.parent
    found = []
    for top in ("notify_launcher", "tests", "benchmarks", "demo"):
        for path in sorted((root / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"sys.path used in: {', '.join(found)}"
