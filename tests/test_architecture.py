"""The layering of `musetalk/` against docs/architecture.md, and the size limits of its code.

Every import of every module (module level, inside functions, under TYPE_CHECKING) is read with
`ast`; a module may import only from its own layer or lower ones, and the module import graph
has no cycle. Library files stay under 600 lines, functions under 80, and only the entry points
import Hydra.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "musetalk"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def layers() -> dict[str, int]:
    """Module prefix -> layer number, from the table in docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        number = re.match(r"(\d+)\b", cells[0]) if len(cells) > 1 else None
        if number:
            for name in re.findall(r"`(musetalk[\w.]*)`", cells[1]):
                out[name] = int(number.group(1))
    return out


LAYERS = layers()


def layer_of(module: str) -> int:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return LAYERS[max(matches, key=len)]


def imports_of(module: str) -> set[str]:
    """The musetalk modules `module` imports (resolved to modules that exist)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                package = (
                    module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
                )
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{node.module}"
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in MODULES:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name.startswith("musetalk") and name != module:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    assert LAYERS, "no layer table found in docs/architecture.md"
    for module in MODULES:
        if module != "musetalk":
            layer_of(module)


def test_no_import_from_a_higher_layer() -> None:
    upward = [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in GRAPH.items()
        if m != "musetalk"
        for d in deps
        if d != "musetalk" and layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    # a package's __init__ re-exporting its submodules is not a cycle through them
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_only_entry_points_import_hydra() -> None:
    offenders = [
        m
        for m, path in MODULES.items()
        if re.search(r"^\s*(from|import) (hydra|omegaconf)\b", path.read_text(), re.MULTILINE)
    ]
    assert not offenders


def test_only_the_app_imports_gradio() -> None:
    offenders = [
        m
        for m, path in MODULES.items()
        if not (m == "musetalk.app" or m.startswith("musetalk.app."))
        and re.search(r"^\s*(from|import) (gradio|gradio_client)\b", path.read_text(), re.M)
    ]
    assert not offenders


def test_files_and_functions_stay_small() -> None:
    too_long = []
    for module, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > 600:
            too_long.append(f"{module}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
