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


# --- import cycles (issue 17) -------------------------------------------------------------------

ROOT = LIBRARY.parent
CYCLE_PACKAGES = ("indextts", "serve_app")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every import statement at any depth (those in functions too: they run when called), except
    in `if TYPE_CHECKING:` bodies, which never run."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for stmt in node.orelse:
            yield from _import_nodes(stmt)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _import_nodes(child)


def _known(name: str, modules: set[str]) -> str | None:
    """The module `name` names, or its longest prefix that is a module (`a.b.attr` -> `a.b`)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules one import statement loads. Parent packages that Python also runs are not
    counted: a package importing its own submodules would otherwise always look circular."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:      # relative: from the module's package, up `level - 1` more
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from x import y`: x.y when y is a submodule, else x
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return {t for t in (_known(n, modules) for n in names) if t is not None}


def _import_graph(root: Path = ROOT, packages: tuple[str, ...] = CYCLE_PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (only modules of `packages` are nodes)."""
    files = {_module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    modules = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        graph[module] = {t for node in _import_nodes(tree)
                         for t in _targets(node, module, is_package, modules)} - {module}
    return graph


def _cycles(graph: dict[str, set[str]], limit: int = 50) -> list[list[str]]:
    """Elementary cycles, each once: started at its smallest node, through larger nodes only."""
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack and len(found) < limit:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ()), reverse=True):
                if nxt == start:
                    found.append(path + [start])
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return found


def test_cycle_finder_finds_cycles_and_only_cycles():
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_import_graph_resolves_submodules_relative_and_function_imports(tmp_path):
    files = {
        "pkg/__init__.py": "from .a import f\n",                     # relative, a name: pkg.a
        "pkg/a.py": "import os\n\ndef f():\n    from . import b\n",   # in a function; b is a module
        "pkg/b.py": "from pkg.sub import c\nimport pkg.sub.c\n",      # absolute, c is a module
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from typing import TYPE_CHECKING\nfrom .. import a\n"
                        "if TYPE_CHECKING:\n    from pkg import b\n",  # up one package; b skipped
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _import_graph(tmp_path, ("pkg",)) == {
        "pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(), "pkg.sub.c": {"pkg.a"}}
    assert _cycles(_import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# --- small units (issue 17) ---------------------------------------------------------------------

SIZE_DIRS = ("indextts", "serve_app", "bench", "scripts", "tests")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _outer_functions(node: ast.AST):
    """Functions and methods not nested in another function (a nested one counts in its outer one)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child
        else:
            yield from _outer_functions(child)


def _size_offenders(paths) -> list[str]:
    offenders = []
    for p in paths:
        text = p.read_text(encoding="utf-8")
        name = p.relative_to(ROOT) if p.is_relative_to(ROOT) else p
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            offenders.append(f"{name}: {n} lines (file)")
        for f in _outer_functions(ast.parse(text)):
            if (n := f.end_lineno - f.lineno + 1) > MAX_FUNCTION_LINES:
                offenders.append(f"{name}:{f.lineno} {f.name}: {n} lines")
    return offenders


def test_size_check_catches_long_functions_and_files(tmp_path):
    statements = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))   # + def line: 81
    nested = "def outer():\n    def inner():\n        pass\n"         # inner is measured within outer
    (tmp_path / "m.py").write_text(f"class C:\n    def long(self):\n{statements}{nested}")
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    assert _size_offenders([tmp_path / "m.py", tmp_path / "big.py"]) == [
        f"{tmp_path / 'm.py'}:2 long: 81 lines", f"{tmp_path / 'big.py'}: 501 lines (file)"]


def test_small_units():
    offenders = _size_offenders(sorted(p for d in SIZE_DIRS for p in (ROOT / d).rglob("*.py")))
    assert not offenders, (f"files over {MAX_FILE_LINES} lines or functions over {MAX_FUNCTION_LINES} "
                           "lines:\n" + "\n".join(offenders))


def test_readme_layout_names_every_part_of_the_library():
    """The README's layout section lists each module and package of indextts/ and serve_app/."""
    readme = (LIBRARY.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    parts = [p.name for p in LIBRARY.iterdir() if (p.suffix == ".py" and not p.name.startswith("_"))
             or (p.is_dir() and (p / "__init__.py").exists())]
    missing = [name for name in parts if name.removesuffix(".py") + ("/" if not name.endswith(".py") else ".py")
               not in layout]
    assert missing == []
    for top in ("indextts/", "serve_app/", "configs/", "cluster/", "tests/", "bench/", "docs/"):
        assert top in layout and (LIBRARY.parent / top).is_dir()
