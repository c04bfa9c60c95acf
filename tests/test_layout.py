"""The shape of the house, checked from the source (the AST of every ``import``, including those inside
functions and ``if TYPE_CHECKING:`` blocks): the runtime core ``core/rdiff/`` has no import cycle, and
imports neither a plugin (built-in or not) nor a tool (the bench, the scaffold, docgen, ``rdiff.testing``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"
PACKAGE = CORE / "rdiff"
TOOLS = ("rdiff.testing",)  # inside the rdiff package but not the runtime: they may import it, not the reverse
#: imports the runtime must never make: the plugins and tools that stand beside it, and the bench's extra
FORBIDDEN_TOP_LEVEL = ("rdiff_", "docgen", "matplotlib")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports, as absolute names; ``from rdiff import x`` means the submodule
    ``rdiff.x`` when there is one, else the package ``rdiff`` itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    return found


def import_graph() -> dict[str, set[str]]:
    """Core module -> the core modules it imports."""
    modules = core_modules()
    known = set(modules)
    return {name: {m for m in imports_of(path, name, known) if m in known and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def _is_tool(name: str) -> bool:
    return any(name == tool or name.startswith(tool + ".") for tool in TOOLS)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_package_imports_are_resolved(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import images\nfrom .errors import UserError\nfrom rdiff import hookimpl\n"
                      "def f():\n    import rdiff.engine\n")
    assert imports_of(source, "rdiff.mod", {"rdiff", "rdiff.images", "rdiff.errors", "rdiff.engine"}) == \
        {"rdiff.images", "rdiff.errors", "rdiff", "rdiff.engine"}


def test_core_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle in core/rdiff: {' -> '.join(cycle)}"


def test_the_runtime_imports_no_tool_and_no_plugin():
    modules = core_modules()
    known = set(modules)
    bad = []
    for name, path in modules.items():
        if _is_tool(name):
            continue
        for imported in imports_of(path, name, known):
            if _is_tool(imported) or imported.split(".")[0].startswith(FORBIDDEN_TOP_LEVEL):
                bad.append(f"{name} imports {imported}")
    assert not bad, "the runtime core must not depend on the tools or plugins beside it: " + "; ".join(bad)


@pytest.mark.parametrize("user", ["rdiff.cli", "rdiff.engine", "rdiff.run"])
def test_the_registry_is_imported_and_never_imports_back(user):
    graph = import_graph()
    assert "rdiff.registry" in graph[user]
    assert not graph["rdiff.registry"] & {"rdiff.cli", "rdiff.engine", "rdiff.run", "rdiff.api"}


def test_the_tools_stand_outside_the_runtime():
    for tool in ("bench.py", "scaffold.py", "docgen.py", "testing.py", "estimate.py", "degrade.py"):
        assert not (PACKAGE / tool).exists(), f"core/rdiff/{tool} is a tool, not the runtime"


# --- size: the runtime stays small, the engine a loop ----------------------------------------------------------

#: lines of ``core/rdiff/*.py`` (the runtime: the ``testing/`` kit excluded) and of engine.py, at most
RUNTIME_LINES, ENGINE_LINES = 4_760, 350


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_runtime_and_its_engine_stay_small():
    runtime = sum(_lines(p) for p in PACKAGE.glob("*.py"))
    assert runtime <= RUNTIME_LINES, (f"core/rdiff/*.py holds {runtime} lines, over its budget of {RUNTIME_LINES}: "
                                      f"is what grew the runtime, or a tool that belongs beside it (plugins/, tools/)?")
    engine = _lines(PACKAGE / "engine.py")
    assert engine <= ENGINE_LINES, f"engine.py holds {engine} lines, over {ENGINE_LINES}: reports and baselines go elsewhere"


# --- hooks: every one is implemented by a plugin and exercised by a test -----------------------------------------

ROOT = CORE.parent


def _hook_names() -> list[str]:
    tree = ast.parse((PACKAGE / "hookspecs.py").read_text(encoding="utf-8"))
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in n.decorator_list)]


def _implemented(folder: Path) -> set[str]:
    """Functions marked ``@hookimpl`` in the Python files below ``folder``."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.FunctionDef) and any(
                    (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == "hookimpl"
                    for d in node.decorator_list):
                found.add(node.name)
    return found


def test_every_hook_has_an_implementation_in_a_plugin_and_a_test():
    hooks = _hook_names()
    assert len(hooks) >= 10
    implemented = _implemented(ROOT / "plugins") | _implemented(ROOT / "examples")
    assert not [h for h in hooks if h not in implemented], "hooks no plugin implements"
    tests = "".join(p.read_text(encoding="utf-8") for p in [*ROOT.glob("tests/*.py"),
                                                            *ROOT.glob("examples/*/tests/test_*.py")]
                    if p.name != "test_layout.py")
    assert not [h for h in hooks if h not in tests], "hooks no test names"
