"""The import rule (issue 17, DESIGN "Layout"): the core imports none of the three packages; the trainer and
the server import the core only, never each other or the operator; only hardened_operator.cli reaches into
the trainer and the server (it dispatches `hardened-model train/serve/...` in a development install).

And (issue 26) the project's modules import one way, with no cycle, a function-level import counted too: it
hides a cycle from the import system, not from the reader; and no module is over 600 lines unless its
docstring says why."""
import ast
import pathlib

import pytest

from helpers import ROOT

PACKAGES = {"hardened_model": ROOT / "core/hardened_model", "hardened_operator": ROOT / "operator/hardened_operator",
            "hardened_trainer": ROOT / "trainer_image/hardened_trainer",
            "hardened_server": ROOT / "server_image/hardened_server"}
FORBIDDEN = {"hardened_model": {"hardened_operator", "hardened_trainer", "hardened_server"},
             "hardened_trainer": {"hardened_operator", "hardened_server"},
             "hardened_server": {"hardened_operator", "hardened_trainer"},
             "hardened_operator": {"hardened_trainer", "hardened_server"}}
ALLOWED = {("hardened_operator", "cli.py")}


def imports(path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_what_the_rule_forbids(package):
    bad = {}
    for path in sorted(PACKAGES[package].rglob("*.py")):
        if (package, path.name) in ALLOWED:
            continue
        hits = imports(path) & FORBIDDEN[package]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad, f"{package} breaks the import rule: {bad}"


MAX_LINES = 600
LONG_REASON = "over 600 lines because"


def project_modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the four packages (a package is its __init__)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in its body (functions included).

    Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first, unless the importer is inside them (they
    are then already being initialized): those count as imported too. ``from a import b`` imports the module
    ``a.b`` when there is one."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                targets.add(module)
                targets |= {f"{module}.{a.name}" for a in node.names}
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in modules and step != name and not name.startswith(step + "."):
                    edges.add(step)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    out = []
    for component in components:
        start = min(component)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:  # breadth first: the shortest way back to start inside the component
            node = queue.pop(0)
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    out.append(paths[node] + [start])
                    queue = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    paths[nxt] = paths[node] + [nxt]
                    queue.append(nxt)
    return out


def test_the_cycle_finder_sees_a_cycle_through_a_package_and_ignores_a_package_importing_its_own_modules():
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set(), "q": {"p.b"}}
    assert cycles(graph) == []
    graph["p.b"] = {"q"}
    graph["q"] = {"p.a"}
    assert cycles(graph) == [["p.a", "p.b", "q", "p.a"]]


def test_no_import_cycle_among_the_project_modules():
    found = cycles(import_graph(project_modules()))
    assert not found, "import cycles (function-level imports included): " + "; ".join(
        " -> ".join(cycle) for cycle in found)


def test_no_module_is_over_600_lines_unless_its_docstring_says_why():
    long = {}
    for name, path in project_modules().items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_LINES and LONG_REASON not in " ".join((ast.get_docstring(ast.parse(text)) or "").split()):
            long[str(path.relative_to(ROOT))] = lines
    assert not long, f"modules over {MAX_LINES} lines whose docstring does not say why ('{LONG_REASON} ...'): {long}"
