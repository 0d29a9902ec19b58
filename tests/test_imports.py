"""Every handgan module imports on its own, and the modules' imports of each other form no cycle
(in-function imports included: a cycle hidden inside a function is still a cycle; imports under
``if TYPE_CHECKING:`` are left out, as they never run)."""
import ast
import subprocess
import sys
from pathlib import Path

import handgan

SRC = Path(handgan.__file__).resolve().parent


def module_names() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported(module: str, tree: ast.AST, known: set[str]) -> set[str]:
    """The handgan modules that ``module`` imports anywhere in its source: ``import a.b``,
    ``from a.b import c`` (``a.b.c`` when that is a module), relative imports resolved."""
    package = module if (SRC.parent / module.replace(".", "/") / "__init__.py").is_file() \
        else module.rpartition(".")[0]
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names)
    return {name for name in found if name in known and name != module}


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    known = set(module_names())
    graph = {}
    for name in known:
        path = SRC.parent / name.replace(".", "/")
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        graph[name] = imported(name, ast.parse(path.read_text(), str(path)), known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_reads_every_kind_of_import():
    known = {"handgan", "handgan.a", "handgan.b", "handgan.pkg", "handgan.pkg.c"}
    tree = ast.parse("import handgan.a\n"
                     "def f():\n    from handgan.pkg import c\n"
                     "from . import b\nfrom handgan.pkg import helper\nimport numpy\n"
                     "if TYPE_CHECKING:\n    from handgan import x\n")
    assert imported("handgan.x", tree, known) == {"handgan.a", "handgan.b", "handgan.pkg.c",
                                                  "handgan.pkg"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_handgan_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_on_its_own():
    # One fresh interpreter; before each module every handgan module is forgotten, so each one
    # is imported alone, as a user's first `import handgan.X` would (__main__ runs the CLI).
    names = [name for name in module_names() if name != "handgan.__main__"]
    script = (
        "import importlib, sys, traceback\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'handgan']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
