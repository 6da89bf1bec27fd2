"""The layers of docs/CONTRACTS.md, enforced on the project's import graph.

The table in docs/CONTRACTS.md (`| layer | modules | ...`, lowest first) places every module of
featcache/, heads/, stores/ and cli.py. Every import in those files counts (also one inside a
function; relative imports are resolved). The rules:

- a module imports only modules of lower layers, or, within its own layer, modules of its own
  package directory (never between top-level modules of featcache/ itself);
- package __init__s are layer 0: anyone may import them, they import nothing of the project but
  version strings; the one exception is `featcache/__init__.py`'s module `__getattr__`, which
  imports `featcache.api` when an attribute is first asked for (`import featcache as fc;
  fc.fit_head`), so importing featcache itself loads nothing else (LAZY_API);
- no import circles; heads.* import nothing from featcache but featcache.options (how configs
  declare their fields); featcache.encoders.registry and
  featcache.encoders.weights import no torch; every module is in some layer.

Each failure lists every offending edge on one line: `file:line -> target  (why)`.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "docs" / "CONTRACTS.md"
PROJECT = ("featcache", "heads", "stores", "cli")  # top-level names of project modules
PACKAGE_DIRS = ("featcache", "heads", "stores")
HEADS_MAY_IMPORT = ("featcache.options", "featcache")  # how a config declares and checks its fields (layer 1)
NO_TORCH = ("featcache.encoders.registry", "featcache.encoders.weights")
FLAT = "featcache"  # the package whose top-level modules never import each other within a layer
LAZY_API = ("featcache", "featcache.api")
REEXPORTS = ("featcache.data",)  # package __inits__ that re-export their own modules (`from featcache.data import load_dataset`)  # the package whose __getattr__ may import its API module
ADD_IT = "add it to a layer in the table of docs/CONTRACTS.md"


@dataclass(frozen=True)
class Layer:
    number: int
    name: str
    patterns: tuple[str, ...]  # dotted names, or `pkg.*` for every module below pkg


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module
    target: str  # the imported project module
    where: str  # file:line of the import
    version_only: bool = False  # `from X import __version__`: only version strings
    lazy: bool = False  # inside a package __init__'s module-level __getattr__ (runs on attribute access)

    def __str__(self) -> str:
        return f"{self.where} -> {self.target}"


@dataclass
class Graph:
    modules: dict[str, str]  # module -> its file, relative to the root
    packages: set[str]  # modules that are a package __init__ (layer 0)
    edges: list[Edge]
    unparsable: list[str]


# --- reading the table and the code -------------------------------------------------------------

def parse_layers(text: str) -> list[Layer]:
    """The rows of the first Markdown table whose header starts `| layer | modules |`."""
    layers, in_table = [], False
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            if in_table:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = [c.lower() for c in cells[:2]] == ["layer", "modules"]
            continue
        if set("".join(cells)) <= set("-: "):  # the |---|---| line
            continue
        m = re.match(r"(\d+)\s*(.*)", cells[0])
        if not m or len(cells) < 2:
            raise ValueError(f"docs/CONTRACTS.md: layer row {line.strip()!r} must read `| <number> <name> | <modules> |`")
        patterns = tuple(p.strip().strip("`").strip() for p in cells[1].split(",") if p.strip())
        layers.append(Layer(int(m[1]), m[2].strip(), patterns))
    return layers


def module_of(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted module name, whether it is a package __init__)."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def project_files(root: Path) -> list[Path]:
    files = sorted(p for d in PACKAGE_DIRS if (root / d).is_dir() for p in (root / d).rglob("*.py"))
    return files + ([root / "cli.py"] if (root / "cli.py").is_file() else [])


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]):
    """(target module, line, version_only) for every project import anywhere in the tree."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                keep = len(parts) - (node.level - 1)
                base = ".".join(parts[:max(keep, 0)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if alias.name != "*" and sub in known:
                    yield sub, node.lineno, False
                else:
                    yield base, node.lineno, "version" in alias.name.lower()


def build_graph(root: Path) -> Graph:
    files = project_files(root)
    names = {f: module_of(f, root) for f in files}
    known = {m for m, _ in names.values()}
    graph = Graph({}, set(), [], [])
    for f, (module, is_package) in names.items():
        rel = f.relative_to(root).as_posix()
        graph.modules[module] = rel
        if is_package:
            graph.packages.add(module)
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"), filename=rel)
        except SyntaxError as e:
            graph.unparsable.append(f"{rel}:{e.lineno}: {e.msg}")
            continue
        seen = set()
        lazy_lines = set()
        if is_package:
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                    lazy_lines |= set(range(node.lineno, node.end_lineno + 1))
        for target, line, version_only in imports_of(tree, module, is_package, known):
            if target.split(".")[0] not in PROJECT or target == module or (target, line) in seen:
                continue
            seen.add((target, line))
            graph.edges.append(Edge(module, target, f"{rel}:{line}", version_only, line in lazy_lines))
    graph.edges.sort(key=lambda e: (e.where.split(":")[0], int(e.where.split(":")[1]), e.target))
    return graph


# --- the checker (pure: the self-check feeds it a made-up graph) -------------------------------

def layer_of(module: str, layers: list[Layer], packages: set[str]) -> Layer | None:
    if module in packages:
        return Layer(0, "package __init__", ())
    for layer in layers:
        if module in layer.patterns:
            return layer
    wild = [(len(p), layer) for layer in layers for p in layer.patterns
            if p.endswith(".*") and module.startswith(p[:-1])]
    return max(wild, key=lambda w: w[0])[1] if wild else None


def _name(layer: Layer) -> str:
    return f"layer {layer.number} {layer.name}".rstrip()


def unplaced(graph: Graph, layers: list[Layer]) -> list[str]:
    bad = []
    for module, file in sorted(graph.modules.items()):
        if layer_of(module, layers, graph.packages) is None:
            hint = ""
            if any(f"{module}.*" in layer.patterns for layer in layers):
                hint = f"; the table expects a package {module.replace('.', '/')}/ (`{module}.*`)"
            bad.append(f"{file}: {module} is in no layer -- {ADD_IT}{hint}")
    for edge in graph.edges:
        if edge.target not in graph.modules and layer_of(edge.target, layers, graph.packages) is None:
            bad.append(f"{edge}  (no such project module, and in no layer -- {ADD_IT} or fix the import)")
    return bad


def layering(graph: Graph, layers: list[Layer]) -> list[str]:
    """Imports that go up a layer, or sideways within a layer out of the package directory."""
    bad = []
    for edge in graph.edges:
        src = layer_of(edge.source, layers, graph.packages)
        dst = layer_of(edge.target, layers, graph.packages)
        if src is None or dst is None or src.number == 0 or dst.number == 0:
            continue  # unplaced: reported by unplaced(); layer 0: package_inits()
        if dst.number > src.number:
            bad.append(f"{edge}  (upward: {edge.source} is {_name(src)}, {edge.target} is {_name(dst)})")
        elif dst.number == src.number:
            home, there = edge.source.rpartition(".")[0], edge.target.rpartition(".")[0]
            if home != there:
                bad.append(f"{edge}  (sideways in {_name(src)}: {edge.source} and {edge.target} are in different package directories)")
            elif home == FLAT:
                bad.append(f"{edge}  (sideways in {_name(src)}: top-level modules of featcache/ never import each other)")
    return bad


def package_inits(graph: Graph) -> list[str]:
    """A package __init__ imports nothing of the project but version strings, the lazy API, and
    (REEXPORTS) the modules of its own package that it re-exports for users."""
    return [f"{edge}  ({edge.source} is a package __init__ (layer 0): it imports nothing of the project but version strings)"
            for edge in graph.edges if edge.source in graph.packages and not edge.version_only
            and not (edge.lazy and (edge.source, edge.target) == LAZY_API)
            and not (edge.source in REEXPORTS and edge.target.startswith(edge.source + "."))]


def heads_from_featcache(graph: Graph) -> list[str]:
    return [f"{edge}  (heads import nothing from featcache)" for edge in graph.edges
            if edge.source.split(".")[0] == "heads" and edge.target.split(".")[0] == "featcache"
            and edge.target not in HEADS_MAY_IMPORT]


def strongly_connected(nodes: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member (the circles)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in sorted(nodes.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def _shortest_cycle(start: str, nodes: dict[str, set[str]], members: set[str]) -> list[str]:
    came = {start: None}
    todo = deque([start])
    while todo:
        v = todo.popleft()
        for w in sorted(nodes.get(v, ())):
            if w == start:
                path = [v]
                while came[path[-1]] is not None:
                    path.append(came[path[-1]])
                return [start] + path[::-1][1:] + [start]
            if w in members and w not in came:
                came[w] = v
                todo.append(w)
    return [start]


def circles(graph: Graph) -> list[str]:
    nodes: dict[str, set[str]] = {}
    for edge in graph.edges:
        if not edge.lazy:  # runs on attribute access, after every import has finished
            nodes.setdefault(edge.source, set()).add(edge.target)
    bad = []
    for component in strongly_connected(nodes):
        members = set(component)
        cycle = " -> ".join(_shortest_cycle(component[0], nodes, members))
        bad += [f"{edge}  (circle: {cycle})" for edge in graph.edges
                if edge.source in members and edge.target in members]
    return bad


# --- the tests -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _layers() -> list[Layer]:
    return parse_layers(CONTRACTS.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _graph() -> Graph:
    return build_graph(ROOT)


def _fail_if(bad: list[str], title: str) -> None:
    if bad:
        pytest.fail(f"{title} ({len(bad)}):\n" + "\n".join(f"  {line}" for line in bad), pytrace=False)


def test_the_layers_table_is_well_formed():
    layers = _layers()
    assert layers, "docs/CONTRACTS.md has no table with the header `| layer | modules |`"
    numbers = [layer.number for layer in layers]
    assert numbers == list(range(1, len(layers) + 1)), f"docs/CONTRACTS.md: layers must be numbered 1, 2, ... lowest first, got {numbers}"
    bad, seen = [], {}
    for layer in layers:
        for p in layer.patterns:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?", p) or p.split(".")[0] not in PROJECT:
                bad.append(f"docs/CONTRACTS.md: {_name(layer)}: {p!r} is not a project module or `package.*`")
            if p in seen:
                bad.append(f"docs/CONTRACTS.md: {p} is in {_name(seen[p])} and in {_name(layer)}")
            seen[p] = layer
    _fail_if(bad, "the layers table")


def test_every_project_file_parses():
    _fail_if(_graph().unparsable, "files the layer check cannot read")


def test_every_module_is_in_a_layer():
    _fail_if(unplaced(_graph(), _layers()), "modules and imports in no layer")


def test_imports_go_down_the_layers():
    _fail_if(layering(_graph(), _layers()),
             "imports that go up a layer, or sideways within one (docs/CONTRACTS.md, Layers)")


def test_package_inits_import_nothing_of_the_project():
    _fail_if(package_inits(_graph()), "package __init__s that import the project")


def test_heads_import_nothing_from_featcache():
    _fail_if(heads_from_featcache(_graph()), "heads that import featcache")


def test_no_import_circles():
    _fail_if(circles(_graph()), "import circles (every edge inside one)")


def test_registry_and_weights_import_no_torch():
    missing = [m for m in NO_TORCH if not (ROOT / (m.replace(".", "/") + ".py")).is_file()]
    _fail_if([f"{m.replace('.', '/')}.py does not exist yet" for m in missing], "modules that must import no torch")
    code = f"import {', '.join(NO_TORCH)}, sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"python -c {code!r} failed:\n{done.stderr.strip()}", pytrace=False)
    if done.stdout.strip() == "False":
        return
    # Name the import chain that brought torch in: the project's frames when torch is first looked up.
    spy = (
        "import sys, traceback\n"
        "class Spy:\n"
        "    chain = None\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and Spy.chain is None:\n"
        f"            root = {str(ROOT)!r} + '/'\n"
        "            Spy.chain = ' -> '.join(f'{f.filename[len(root):]}:{f.lineno}' for f in traceback.extract_stack()\n"
        "                                    if f.filename.startswith(root) and '/.venv/' not in f.filename)\n"
        "sys.meta_path.insert(0, Spy())\n"
        f"import {', '.join(NO_TORCH)}\n"
        "print(Spy.chain)\n"
    )
    chain = subprocess.run([sys.executable, "-c", spy], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.strip()
    pytest.fail(f"importing {' and '.join(NO_TORCH)} imports torch, through: {chain} -> torch", pytrace=False)


def test_the_checker_catches_planted_faults():
    """A made-up graph with one fault of each kind: the checker must name each one."""
    layers = [Layer(1, "low", ("pkg.low", "pkg.other")), Layer(2, "high", ("pkg.high", "sub.*")),
              Layer(3, "heads", ("heads.*",))]
    files = ["pkg.low", "pkg.other", "pkg.high", "sub.a", "sub.b", "heads.h", "pkg.new"]
    modules = {m: m.replace(".", "/") + ".py" for m in files} | {"pkg": "pkg/__init__.py", "sub": "sub/__init__.py"}

    def graph(*edges: tuple) -> Graph:  # (source, target[, version_only])
        return Graph(modules, {"pkg", "sub"}, [Edge(e[0], e[1], f"{modules[e[0]]}:{i + 1}", *e[2:])
                                               for i, e in enumerate(edges)], [])

    clean = graph(("pkg.high", "pkg.low"), ("sub.a", "sub.b"), ("sub.a", "pkg.low"), ("heads.h", "pkg"),
                  ("sub", "pkg", True))
    assert layering(clean, layers) == [] and circles(clean) == [] and package_inits(clean) == []
    assert heads_from_featcache(clean) == []
    assert unplaced(clean, layers) == ["pkg/new.py: pkg.new is in no layer -- " + ADD_IT]

    faulty = graph(("pkg.low", "pkg.high"),  # upward, and with the next edge a circle
                   ("pkg.high", "pkg.low"),
                   ("pkg.low", "pkg.other"),  # sideways between top-level modules of one package...
                   ("sub.a", "pkg.high"),  # ...and between package directories
                   ("sub.a", "sub.b"), ("sub.b", "sub.a"),  # a circle within one package
                   ("pkg", "pkg.low"))  # a package __init__ importing the project
    up = layering(faulty, layers)
    assert any(line.startswith("pkg/low.py:1 -> pkg.high  (upward") for line in up), up
    assert sum("sideways" in line for line in up) == 1, up  # pkg.low -> pkg.other is not FLAT here
    assert any(line.startswith("sub/a.py:4 -> pkg.high  (sideways") for line in up), up
    found = circles(faulty)
    assert "pkg/low.py:1 -> pkg.high  (circle: pkg.high -> pkg.low -> pkg.high)" in found, found
    assert "pkg/high.py:2 -> pkg.low  (circle: pkg.high -> pkg.low -> pkg.high)" in found, found
    assert any(line.startswith("sub/a.py:5 -> sub.b  (circle") for line in found), found
    assert len(found) == 4, found
    assert package_inits(faulty) == ["pkg/__init__.py:7 -> pkg.low  (pkg is a package __init__ (layer 0): "
                                     "it imports nothing of the project but version strings)"]

    flat = [Layer(1, "core", ("featcache.a", "featcache.b"))]
    fc = {"featcache.a": "featcache/a.py", "featcache.b": "featcache/b.py", "featcache": "featcache/__init__.py"}
    side = Graph(fc, {"featcache"}, [Edge("featcache.a", "featcache.b", "featcache/a.py:3")], [])
    assert layering(side, flat) == ["featcache/a.py:3 -> featcache.b  (sideways in layer 1 core: "
                                    "top-level modules of featcache/ never import each other)"]
    api = Graph(fc | {"featcache.api": "featcache/api.py"}, {"featcache"},
                [Edge("featcache", "featcache.api", "featcache/__init__.py:8", lazy=True),  # the lazy API: allowed
                 Edge("featcache", "featcache.a", "featcache/__init__.py:9", lazy=True),  # anything else lazily: not
                 Edge("featcache.api", "featcache.a", "featcache/api.py:2"), Edge("featcache.a", "featcache", "featcache/a.py:1", True)], [])
    assert package_inits(api) == ["featcache/__init__.py:9 -> featcache.a  (featcache is a package __init__ (layer 0): "
                                  "it imports nothing of the project but version strings)"]
    assert circles(api) == []  # the lazy edge runs after every import: no circle through it
    h = Graph({"heads.x": "heads/x.py"}, set(), [Edge("heads.x", "featcache.data", "heads/x.py:9")], [])
    assert heads_from_featcache(h) == ["heads/x.py:9 -> featcache.data  (heads import nothing from featcache)"]


def test_relative_and_lazy_imports_are_resolved(tmp_path):
    """`from . import x`, `from .x import y`, `from pkg import mod` and an import inside a function."""
    (tmp_path / "featcache" / "e2e").mkdir(parents=True)
    for f in ("featcache/__init__.py", "featcache/e2e/__init__.py", "featcache/data.py", "featcache/e2e/model.py"):
        (tmp_path / f).write_text("")
    (tmp_path / "featcache" / "e2e" / "loop.py").write_text(
        "from . import model\nfrom ..data import load\nfrom featcache import __version__\n"
        "def f():\n    import featcache.data\n    from featcache import data\n    import numpy\n")
    g = build_graph(tmp_path)
    got = [(str(e), e.version_only) for e in g.edges if e.source == "featcache.e2e.loop"]
    assert got == [("featcache/e2e/loop.py:1 -> featcache.e2e.model", False), ("featcache/e2e/loop.py:2 -> featcache.data", False),
                   ("featcache/e2e/loop.py:3 -> featcache", True), ("featcache/e2e/loop.py:5 -> featcache.data", False),
                   ("featcache/e2e/loop.py:6 -> featcache.data", False)], got
    assert g.packages == {"featcache", "featcache.e2e"}


def test_each_public_name_is_defined_in_one_module():
    """One name, one job: no two modules define a public function or class of the same name.
    featcache/api.py is the exception by design: it offers library functions under their command's
    name (fc.fit_head wraps stage 2's fit_head to hand back a model)."""
    homes: dict[str, list[str]] = {}
    for path in [*ROOT.glob("featcache/**/*.py"), *ROOT.glob("heads/*.py"), *ROOT.glob("stores/*.py")]:
        if path.name == "api.py" and path.parent.name == "featcache":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    twice = {name: files for name, files in homes.items() if len(files) > 1}
    assert not twice, twice


def test_run_kinds_are_branched_on_only_in_the_registry():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.glob("featcache/**/*.py") if p.name != "kinds.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bkind\s*[!=]=", line)]
    assert not hits, hits


# --- benchmarks stand alone ----------------------------------------------------------------------

def _is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys"


def _changes_sys_path(node: ast.AST) -> bool:
    """sys.path.insert/append/extend(...), or an assignment to sys.path or a slice of it."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and _is_sys_path(node.func.value)
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    return any(_is_sys_path(t.value if isinstance(t, ast.Subscript) else t) for t in targets)


def reaches_into_tests(source: str) -> list[int]:
    """Lines that import a module of tests/ (a name starting with `test`) or put tests/ on sys.path
    (a "tests" folder in a sys.path change, or in the value of a name that change uses)."""
    tree = ast.parse(source)
    values = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            names = []
        if any(name.startswith("test") for name in names):
            lines.append(node.lineno)
        elif _changes_sys_path(node):
            used = [node] + [values[n.id] for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in values]
            if any(isinstance(c, ast.Constant) and isinstance(c.value, str) and Path(c.value).name == "tests"
                   for u in used for c in ast.walk(u)):
                lines.append(node.lineno)
    return sorted(lines)


def test_benchmarks_import_nothing_from_tests():
    """A benchmark runs without the test suite: what both use lives in benchmarks/ (the fault
    scenarios in fault_scenarios.py), so no benchmark imports a test module or puts tests/ on sys.path."""
    planted = ('import sys\nTESTS = ROOT / "tests"\nsys.path.insert(0, str(ROOT / "tests"))\nsys.path[:0] = [str(TESTS)]\n'
               'from test_faults import ENC\nimport tests.helpers\nfrom typer.testing import CliRunner\nsys.path.insert(0, str(ROOT))\n')
    assert reaches_into_tests(planted) == [3, 4, 5, 6]
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(ROOT.glob("benchmarks/**/*.py"))
           for line in reaches_into_tests(p.read_text(encoding="utf-8"))]
    assert not bad, f"benchmarks that reach into tests/: {bad}"


def test_an_installed_wheel_holds_every_package():
    """pyproject's package list finds every folder of the house (a wheel, unlike `pip install -e`,
    holds only what it lists), and every folder with Python files is a package."""
    import tomllib

    from setuptools import find_packages

    found = set(find_packages(str(ROOT), **tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]))
    folders = {p.parent for top in ("featcache", "heads", "stores") for p in (ROOT / top).rglob("*.py")}
    assert all((f / "__init__.py").is_file() for f in folders), sorted(map(str, folders))
    assert {".".join(f.relative_to(ROOT).parts) for f in folders} <= found
