"""The package's modules import each other without a cycle: read from the source, lazy imports inside functions
included (a function-level import hides a cycle from Python's loader, not from the reader of the code)."""

import ast
import graphlib
from pathlib import Path

import scratchdet

PACKAGE = Path(scratchdet.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scratchdet_imports(path: Path, modules: set[str]) -> set[str]:
    """The scratchdet modules `path` imports anywhere in its body (`from scratchdet.x import y` names module
    scratchdet.x.y when that is a module, else scratchdet.x). Imports under `if TYPE_CHECKING:` count too: they
    are an annotation's dependency, and a cycle through them still ties the modules together."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scratchdet")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("scratchdet"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def parents(module: str) -> set[str]:
    """scratchdet.a.b.c -> {scratchdet.a, scratchdet.a.b}: the packages whose __init__ runs first."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(2, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """{module: the scratchdet modules and packages it imports}, a package's __init__ being a node of its own
    (importing scratchdet.a.b runs scratchdet/a/__init__.py first, so an __init__ that re-exports can close a cycle).
    The top package is left out: its __init__ imports nothing."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {}
    for p in paths:
        direct = scratchdet_imports(p, modules)
        graph[module_name(p)] = (direct | {q for m in direct for q in parents(m)}) - {"scratchdet", module_name(p)}
    return graph


def test_no_import_cycle_among_scratchdet_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert "scratchdet.study.runner" in graph["scratchdet.cli"]  # lazy imports inside functions are read
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        # graphlib lists each node before a node that depends on it: reversed, each module imports the next.
        raise AssertionError(f"import cycle: {' imports '.join(reversed(e.args[1]))}") from None


def test_a_function_level_import_closing_a_cycle_is_found(tmp_path):
    """The reader sees an import inside a function (how cli -> study.runner -> study.launchers -> cli hid)."""
    a = tmp_path / "a.py"
    a.write_text("def main():\n    from scratchdet.study.runner import run_study\n")
    modules = {"scratchdet.study.runner", "scratchdet.study"}
    assert scratchdet_imports(a, modules) == {"scratchdet.study.runner"}
    graph = {"scratchdet.cli": {"scratchdet.study.runner"}, "scratchdet.study.runner": {"scratchdet.cli"}}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("the cycle cli -> runner -> cli was not found")


MOVED = {
    "scratchdet.study.results": "scratchdet.report.results",
    "scratchdet.study.findings": "scratchdet.report.findings",
    "scratchdet.study.verdict": "scratchdet.report.verdict",
    "scratchdet.study.figures": "scratchdet.report.figures",
    "scratchdet.study.report": "scratchdet.report.page",
}


def test_moved_modules_keep_their_old_names_for_scripts_and_nothing_here_uses_them():
    import importlib
    import sys
    import warnings

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)  # the same object: private names and state included
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    users = {m: sorted(set(MOVED) & deps) for m, deps in import_graph().items() if set(MOVED) & deps}
    assert users == {}
