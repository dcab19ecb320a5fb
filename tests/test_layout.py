"""Architecture rules that keep the library reusable (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).parent.parent / "indextts"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_ray_or_serving_code():
    offenders = [str(p.relative_to(LIBRARY)) for p in LIBRARY.rglob("*.py")
                 if _imports(p) & {"ray", "serve_app", "fastapi"}]
    assert offenders == []


def _sets_environ(node: ast.stmt) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else []
    return any(isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ" for t in targets) or \
        "os.environ.update" in ast.unparse(node) or "os.environ.setdefault" in ast.unparse(node)


def test_library_does_not_print_or_set_the_environment_at_import():
    offenders = []
    for p in LIBRARY.rglob("*.py"):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:   # module level: import time
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue     # bodies run when called, not at import
            if _sets_environ(node):
                offenders.append(f"{p.name}: sets os.environ")
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                    getattr(node.value.func, "id", "") == "print":
                offenders.append(f"{p.name}: prints")
    assert offenders == []
