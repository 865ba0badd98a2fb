"""Imports point down the stack: every module imports in a fresh interpreter, no module-level
import cycle exists, and the executor package never reaches up into the entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llm_infer"


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(body: list[ast.stmt], module_level: bool = True) -> list[str]:
    """Modules imported by these statements: at module level only (skipping `if TYPE_CHECKING:`
    blocks and function bodies), or everywhere."""
    found: list[str] = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if isinstance(node, ast.ClassDef):
                found += _imports(node.body)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            found += _imports(getattr(node, field, []) or [], module_level)
    return found


def _deps(module: str, module_level: bool = True) -> set[str]:
    """The package's modules (and their parent packages, but the root) that `module` imports."""
    deps: set[str] = set()
    for name in _imports(ast.parse(MODULES[module].read_text()).body, module_level):
        parts = name.split(".")
        deps |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return {d for d in deps if d in MODULES and d != module and not module.startswith(d + ".")}


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\nfailed = []\n"
            f"for name in {sorted(MODULES)!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as e:\n        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_no_module_level_import_cycle():
    graph = {m: _deps(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_executor_package_does_not_import_the_entrypoints():
    executor = [m for m in MODULES if m.startswith("llm_infer.executor")]
    assert "llm_infer.executor.base" in executor
    up = {m: sorted(d for d in _deps(m, module_level=False) if d.startswith("llm_infer.entrypoints"))
          for m in executor}
    assert {m: d for m, d in up.items() if d} == {}


# The design's layers, top to bottom: each may import its own layer and those below it.
LAYERS = ["llm_infer.entrypoints", "llm_infer.executor", "llm_infer.runtime", "llm_infer.parallel",
          "llm_infer.kernels"]


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")), None)


def test_imports_point_down_the_layers():
    upward = {}
    for module in MODULES:
        mine = _layer(module)
        if mine is None:
            continue
        bad = sorted(d for d in _deps(module, module_level=False) if (_layer(d) is not None and _layer(d) < mine))
        if bad:
            upward[module] = bad
    assert upward == {}
