"""The import graph of minivae has no cycles, deferred imports (inside functions) included.

The graph is read from the source with ``ast``, not by importing anything: one node per module
of the package, one edge per import of another module of the package, wherever the import
statement stands. Relative imports are resolved; ``from package import name`` is an edge to the
submodule ``package.name`` when there is one, else to ``package``; importing ``a.b.c`` also runs
``a.b``'s ``__init__``, so that is an edge too, except for the importer's own enclosing packages
(they are always imported first, and every module would otherwise depend on its package).
Imports of anything outside the package (the standard library, NumPy, and the optional packages
cupy, matplotlib, tqdm, scikit-learn, umap) are no edges.
"""
import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "minivae"


def module_names(package_dir):
    """``{dotted module name: path}`` of every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(module, is_package, node, modules):
    """The modules of ``modules`` that one Import / ImportFrom statement ``node`` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
            for alias in node.names]


def import_graph(package_dir):
    """``{module: set of modules it imports}`` for the package in ``package_dir``."""
    modules = module_names(package_dir)
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if is_package:
            ancestors.add(module)
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(module, is_package, node, modules):
                parts = target.split(".")
                # the target and the packages above it that importing it runs
                for i in range(len(parts), 0, -1):
                    name = ".".join(parts[:i])
                    if name in modules and name not in ancestors and name != module:
                        edges.add(name)
        graph[module] = edges
    return graph


def find_cycles(graph):
    """Every elementary cycle of ``graph``, each a tuple starting at its alphabetically first module."""
    cycles = set()
    for start in sorted(graph):
        # Paths from start through modules after it only, so each cycle is found once.
        stack = [(start, (start,))]
        while stack:
            module, path = stack.pop()
            for nxt in sorted(graph[module]):
                if nxt == start:
                    cycles.add(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + (nxt,)))
    return cycles


def _describe(cycles):
    return "\n".join(" -> ".join(c + (c[0],)) for c in sorted(cycles))


def test_minivae_has_no_import_cycles():
    cycles = find_cycles(import_graph(PACKAGE_DIR))
    assert not cycles, f"import cycles:\n{_describe(cycles)}"


def _package(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_the_graph_sees_deferred_relative_and_submodule_imports(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "from . import a\n",
        "a.py": "import os\nimport numpy\nfrom .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def f():\n    from ..c import g\n    import pkg.d\n",
        "c.py": "from . import d\ng = 1\n",
        "d.py": "from .sub.b import f\ntry:\n    import cupy\nexcept ImportError:\n    pass\n",
    })
    assert import_graph(pkg) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub", "pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c", "pkg.d"},
        "pkg.c": {"pkg.d"},
        "pkg.d": {"pkg.sub", "pkg.sub.b"},
    }


def test_a_cycle_through_a_deferred_import_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "engine.py": "from .ops import add\n",
        "ops.py": "def add():\n    from . import engine\n",
        "clean.py": "from . import ops\n",
    })
    assert find_cycles(import_graph(pkg)) == {("pkg.engine", "pkg.ops")}


def test_every_cycle_is_listed_once():
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"d"}}
    assert find_cycles(graph) == {("a", "b"), ("a", "b", "c"), ("d",)}
