"""The layout holds: what is installed equals the folders, and the import rules between the core,
the components, the lab and the tests (docs/architecture.md, "Package layout"). Pure reads of
files and syntax trees: nothing here imports the code it checks, so a broken module cannot hide a
broken rule.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]

CORE = "wg_failover"
COMPONENTS = ("wg_failover.exporter", "wg_failover.responder", "wg_failover.client",
              "wg_failover.agent")
LAB = "wg_failover.lab"
PRODUCT = (CORE, *COMPONENTS)  # what runs on workers, clients and the master
NOT_IN_PRODUCT = (LAB, "tests", "bench")
MAX_LINES = 400  # issue 13: a module past ~400 lines wants splitting
SHORT = ("wg_failover.responder", "wg_failover.client")


@dataclass(frozen=True)
class Module:
    name: str  # dotted, as installed
    path: Path
    is_package: bool  # an __init__.py: relative imports resolve against the module itself
    text: str | None = None  # the source; None: read from `path`

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))

    def source(self) -> str:
        return self.text if self.text is not None else self.path.read_text()


@dataclass(frozen=True)
class Import:
    module: str  # dotted, relative imports resolved
    name: str | None  # `from module import name`: an attribute or a submodule
    line: int
    top_level: bool  # runs when the module is imported (not in a function, not TYPE_CHECKING)

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.module,) if self.name is None else (self.module, f"{self.module}.{self.name}")


# ------------------------------------------------------------------------------------ reading
def _ignored(path: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in path.parts)


def _within(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def package_folders() -> dict[str, tuple[Path, str]]:
    """{dotted package: (folder, its package-dir entry)} for every folder with an __init__.py
    under a mapped folder."""
    found: dict[str, tuple[Path, str]] = {}
    for entry, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if _ignored(rel):
                continue
            name = ".".join((entry, *rel.parts))
            # A subfolder with a package-dir entry of its own is found from that entry.
            if max((p for p in PACKAGE_DIR if _within(name, p)), key=len) == entry:
                found[name] = (init.parent, entry)
    return found


def modules(*entries: str) -> list[Module]:
    """Every module in the folders of these package-dir entries (`wg_failover` is the core's
    folder only, not the components installed beneath it)."""
    out = []
    for pkg, (folder, entry) in package_folders().items():
        if entry not in entries:
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name == "__init__.py":
                out.append(Module(pkg, path, True))
            else:
                out.append(Module(f"{pkg}.{path.stem}", path, False))
    return out


def resolve(module: Module, level: int, name: str | None) -> str:
    """The absolute dotted name of `from {'.' * level}{name} import ...` written in `module`."""
    if level == 0:
        return name or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{module.where}: relative import beyond the top-level package")
    return ".".join(parts[: len(parts) - (level - 1)] + ([name] if name else []))


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_call(node: ast.AST) -> str | None:
    """The literal name in `importlib.import_module("x")` or `__import__("x")`."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func, arg = node.func, node.args[0]
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
    if named and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def imports(module: Module) -> Iterator[Import]:
    """Every import in the module, wherever it is written (functions, TYPE_CHECKING, try)."""

    def walk(nodes: list[ast.AST], top: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(alias.name, None, node.lineno, top)
            elif isinstance(node, ast.ImportFrom):
                base = resolve(module, node.level, node.module)
                for alias in node.names:
                    yield Import(base, None if alias.name == "*" else alias.name, node.lineno,
                                 top)
            elif (literal := _import_call(node)) is not None:
                yield Import(literal, None, node.lineno, False)  # dynamic: not a load order
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(list(ast.iter_child_nodes(node)), False)
            elif isinstance(node, ast.If) and _type_checking(node.test):
                yield from walk([node.test], top)
                yield from walk(node.body, False)
                yield from walk(node.orelse, top)
            else:
                yield from walk(list(ast.iter_child_nodes(node)), top)

    tree = ast.parse(module.source(), str(module.path))
    yield from walk(tree.body, True)


def violations(sources: list[Module], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports name` for each import statement that reaches into `forbidden`."""
    found: dict[tuple[str, int], str] = {}
    for m in sources:
        for imp in imports(m):
            hit = next((t for t in imp.targets if any(_within(t, f) for f in forbidden)), None)
            if hit is not None:
                found.setdefault((m.where, imp.line), hit)
    return [f"{where}:{line} imports {target}" for (where, line), target in sorted(found.items())]


def import_graph(mods: list[Module]) -> dict[str, set[str]]:
    """module -> the modules of `mods` it imports while it is being imported."""
    names = {m.name for m in mods}

    def known(dotted: str) -> str | None:
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {m.name: set() for m in mods}
    for m in mods:
        for imp in imports(m):
            if not imp.top_level:
                continue
            # `from pkg import x` loads the module pkg.x when there is one, else pkg itself.
            sub = f"{imp.module}.{imp.name}" if imp.name else None
            target = sub if sub in names else known(imp.module)
            # A package importing a name it defines itself (`from . import x` in its
            # __init__.py) loads nothing new: not an edge.
            if target is not None and target != m.name:
                graph[m.name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(_cycle_through(v, component, graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    # The shortest way back to `start` inside its component: the cycle a failure shows.
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strong component always has one


# ------------------------------------------------------------------------------- the packages
def test_installed_packages_equal_the_package_folders():
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(listed)}"
    on_disk = set(package_folders())
    assert set(listed) == on_disk, (
        f"pyproject.toml [tool.setuptools] packages: missing {sorted(on_disk - set(listed))}, "
        f"no such package folder {sorted(set(listed) - on_disk)}")


def test_every_package_dir_entry_is_a_package_folder():
    for pkg, folder in PACKAGE_DIR.items():
        assert (ROOT / folder).is_dir(), f"package-dir {pkg!r} = {folder!r}: no such folder"
        assert (ROOT / folder / "__init__.py").is_file(), f"{folder}/ has no __init__.py"


def test_every_folder_of_modules_is_a_package():
    # Without __init__.py a folder's modules are left out of the wheel, yet import fine from
    # the checkout: only the installed product would break.
    for folder in set(PACKAGE_DIR.values()):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if not _ignored(rel):
                assert (path.parent / "__init__.py").is_file(), f"{rel}: folder not a package"


def test_every_top_level_package_is_mapped():
    # A new component folder (say agent/) that pyproject.toml does not map is never installed.
    top = {p.parent.name for p in ROOT.glob("*/__init__.py") if not _ignored(p.relative_to(ROOT))}
    unmapped = top - {"tests"} - set(PACKAGE_DIR.values())
    assert not unmapped, f"top-level packages not in [tool.setuptools.package-dir]: {unmapped}"


# --------------------------------------------------------------------------- the import rules
def test_product_packages_import_no_lab_tests_or_bench():
    bad = violations(modules(*PRODUCT), NOT_IN_PRODUCT)
    assert not bad, "the product must run without the lab, the tests and the benches:\n" + \
        "\n".join(bad)


def test_the_core_imports_no_component():
    core = modules(CORE)
    assert core, "no core modules found"
    bad = violations(core, (*COMPONENTS, LAB))
    assert not bad, "the core may not import a component:\n" + "\n".join(bad)


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_talk_only_through_the_core(component):
    others = tuple(c for c in COMPONENTS if c != component)
    bad = violations(modules(component), others)
    assert not bad, f"{component} imports another component:\n" + "\n".join(bad)


def test_no_import_cycle_in_the_product():
    found = cycles(import_graph(modules(*PRODUCT)))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_responder_and_client_modules_stay_short():
    files = [p for entry in SHORT for p in sorted((ROOT / PACKAGE_DIR[entry]).rglob("*.py"))
             if not _ignored(p.relative_to(ROOT))]
    assert files
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


# ------------------------------------------------------------- the checks themselves can fail
def _fake(name: str, text: str = "", is_package: bool = False) -> Module:
    return Module(name, ROOT / "responder" / "made-up.py", is_package, text)


def test_relative_imports_resolve_to_dotted_names():
    mod = _fake("wg_failover.responder.api.routes")
    pkg = _fake("wg_failover.responder.api", is_package=True)
    assert resolve(mod, 1, None) == "wg_failover.responder.api"
    assert resolve(mod, 1, "state") == "wg_failover.responder.api.state"
    assert resolve(mod, 2, "store") == "wg_failover.responder.store"
    assert resolve(pkg, 1, "routes") == "wg_failover.responder.api.routes"
    assert resolve(pkg, 3, "lab") == "wg_failover.lab"
    with pytest.raises(ValueError):
        resolve(mod, 5, "x")


def test_imports_are_found_wherever_written():
    src = (
        "from typing import TYPE_CHECKING\n"
        "import wg_failover.wg\n"
        "from .. import lab\n"
        "if TYPE_CHECKING:\n"
        "    from ..client import sources\n"
        "def f():\n"
        "    from tests.helpers import wait\n"
        "    return importlib.import_module('bench.x')\n"
        "try:\n"
        "    from ..exporter.dump import parse_rows\n"
        "except ImportError:\n"
        "    pass\n"
    )
    mod = _fake("wg_failover.responder.x", src)
    got = {(i.module, i.name, i.top_level) for i in imports(mod)}
    assert got == {
        ("typing", "TYPE_CHECKING", True), ("wg_failover.wg", None, True),
        ("wg_failover", "lab", True), ("wg_failover.client", "sources", False),
        ("tests.helpers", "wait", False), ("bench.x", None, False),
        ("wg_failover.exporter.dump", "parse_rows", True)}
    assert violations([mod], (*NOT_IN_PRODUCT, *COMPONENTS)) == [
        f"responder/made-up.py:{n} imports {t}" for n, t in (
            (3, "wg_failover.lab"), (5, "wg_failover.client"), (7, "tests.helpers"),
            (8, "bench.x"), (10, "wg_failover.exporter.dump"))]


def test_a_cycle_is_reported_with_its_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_follows_relative_package_and_attribute_imports():
    mods = [_fake("p", "VERSION = 1\nfrom . import a, VERSION\n", is_package=True),
            _fake("p.a", "from .b import thing\nimport p.c\n"),
            _fake("p.b", "from p import a\ndef f():\n    import p.c\n"),
            _fake("p.c", "import os\n")]
    graph = import_graph(mods)
    assert graph == {"p": {"p.a"}, "p.a": {"p.b", "p.c"}, "p.b": {"p.a"}, "p.c": set()}
    assert cycles(graph) == [["p.a", "p.b", "p.a"]]
