"""The house rules of the package, read from the source with ``ast`` (nothing is imported, no torch): imports flow one
way (no circle, nothing below the CLI and the UI imports them), functions stay readable, test scaffolding lives in
tests/."""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "threedpe"
MAX_FUNCTION_LINES = 120
TOP_LAYERS = ("threedpe.cli", "threedpe.ui")  # the user interfaces: nothing below them imports them


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``if TYPE_CHECKING:`` (never executed)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports anywhere (module level or inside a function), with their parent packages
    (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first), except ``name``'s own packages."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: from the package, one level up per extra dot
                above = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(above + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                parts = target.split(".")
                # a sibling's parent package is the importer's own, already being imported: not an edge
                found.update(ancestor for ancestor in (".".join(parts[:i]) for i in range(2, len(parts) + 1))
                             if ancestor == target or not name.startswith(ancestor + "."))
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_at_every_level():
    """The reader finds module-level and function-level imports (the CLI imports its commands' modules lazily)."""
    assert "threedpe.commands" in GRAPH["threedpe.cli"]  # module level
    assert "threedpe.pipeline" in GRAPH["threedpe.cli"]  # inside the command functions
    assert "threedpe.weights" in GRAPH["threedpe.weights.checkpoints"]  # parent package of an import


def test_no_import_circle():
    assert cycles(GRAPH) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_nothing_below_the_cli_and_the_ui_imports_them():
    offenders = [f"{name} imports {target}" for name, targets in GRAPH.items() for target in sorted(targets)
                 for top in TOP_LAYERS
                 if (target == top or target.startswith(top + ".")) and name != "threedpe.__main__"
                 and not (name == top or name.startswith(top + "."))]
    assert offenders == []


def test_training_takes_no_constants_from_the_pipeline():
    """Weight names, devices and the text-model source come from threedpe.weights and threedpe.devices."""
    training = [name for name in GRAPH if name.startswith("threedpe.training")]
    assert training
    assert [name for name in training if "threedpe.pipeline" in GRAPH[name]] == []


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_longer_than_120_lines():
    assert [entry for path in [ROOT / "app.py", *MODULES.values()] for entry in long_functions(path)] == []


def test_test_scaffolding_lives_in_tests():
    assert not (PACKAGE / "testing.py").exists()
    assert (ROOT / "tests" / "fixtures.py").is_file()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"tests", "pytest"}, f"{name} imports test code"
        source = path.read_text(encoding="utf-8").lower()
        for words in ("small test generator", "tiny test model", "small test model"):
            assert words not in source, f"{name} has a branch or note for {words}s"
