"""deepr's packages depend one way: protocol < runtime < server, protocol < client, and
tasks on protocol, runtime and client (never on the server's insides); zoo and exporters
take only the protocol from serving, and no module imports itself back through others.
Read from the source (every import, those inside functions too), so a lazy import cannot
hide a wrong direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("serving", "zoo", "exporters", "deepr")

MAY_IMPORT = {
    "serving.protocol": {"serving.protocol"},
    "serving.runtime": {"serving.protocol", "serving.runtime"},
    "serving.server": {"serving.protocol", "serving.runtime", "serving.server"},
    "serving.client": {"serving.protocol", "serving.client"},
    "serving.tasks": {"serving.protocol", "serving.runtime", "serving.client", "serving.tasks"},
}
"""What each serving package may import from serving."""

ALLOWED_FROM_SERVING = {"zoo": ("serving.protocol",), "exporters": ("serving.protocol",)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "generated" not in path.parts
    }


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The deepr modules `path` imports (a `from package import module` counts the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = _sources()
    return {name: _imports(path, name, set(sources)) for name, path in sources.items()}


def _package(module: str) -> str | None:
    return next((p for p in MAY_IMPORT if module == p or module.startswith(p + ".")), None)


def test_serving_packages_import_downwards_only(graph):
    wrong = []
    for module, targets in graph.items():
        own = _package(module)
        for target in targets:
            if module.startswith("serving") and not target.startswith("serving"):
                wrong.append(f"{module} -> {target} (serving never imports zoo, exporters or the CLI)")
            elif own and target != "serving" and _package(target) not in MAY_IMPORT[own]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_zoo_and_exporters_take_only_the_protocol_from_serving(graph):
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] in ALLOWED_FROM_SERVING
        for target in targets
        if target.startswith("serving.") and not target.startswith(ALLOWED_FROM_SERVING[module.split(".")[0]])
    ]
    assert not wrong, "zoo/exporters reaching past serving.protocol:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over the module graph; a package's
    __init__ re-exporting its own modules is not a cycle of the design."""
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_zoo_and_the_cli_start_without_torchvision():
    """torchvision's import costs every command about 2 s (it brings torch._dynamo): the zoo,
    the exporters and the CLI import it where a model, transform or dataset needs it."""
    code = "import sys, zoo, exporters, deepr.cli; print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
