"""The shape of the package, checked: layers that only point down, no import cycle, no file
over 400 lines, ``ray`` only in ``orchestrate/``, no stage importing another stage, and the
run directory written only by the store and the stages.

The layers are written down in ``docs/architecture.md``; ``LAYERS`` below is the same list,
lowest first. A module may import modules of its own layer or of a lower one; ties inside a
layer are kept acyclic by the cycle check.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "datamodels"

LAYERS: list[set[str]] = [
    {"errors"},
    {"estimators", "regress", "metrics", "devices"},  # the maths: arrays in, arrays out
    {"models", "plans"},  # the registries config validates against
    {"config"},
    {"data"},
    {"trainers"},
    {"gradients"},
    {"store"},
    {"orchestrate"},
    {"methods", "applications"},
    {"stages"},
    {"report", "browse"},  # the report pages and the run browser: they only read a run
    {"api", "jobs"},
    {"cli", "__main__"},
    {""},  # datamodels/__init__.py
]
HEAVY = ("torch", "ray", "ffcv", "matplotlib")
MAX_LINES = 400


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
# parsed once, at collection: CPython 3.11 can refuse ast.parse deep inside a long test session
# ("AST constructor recursion depth mismatch") after other tests changed the recursion limit
TREES = {module: ast.parse(path.read_text()) for module, path in MODULES.items()}


def layer_of(module: str) -> int:
    section = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if section in names:
            return rank
    raise AssertionError(f"{module}: its folder is in no layer of LAYERS; add it there")


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


class Import:
    def __init__(self, source: str, target: str, line: int, deferred: bool, text: str) -> None:
        self.source, self.target, self.line, self.deferred, self.text = (
            source, target, line, deferred, text)

    def __repr__(self) -> str:
        where = "in a function" if self.deferred else "at module level"
        path = MODULES[self.source].relative_to(PACKAGE.parent)
        return f"{path}:{self.line} {where}: {self.text}"


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(module: str) -> list[tuple[str, int, bool, ast.AST]]:
    """(imported name, line, inside a function, node) for every import of ``module``, leaving
    out ``if TYPE_CHECKING:`` blocks (annotations only)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool, ast.AST]] = []

    def walk(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inner, child) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, child.lineno, inner, child))
                found.extend((f"{base}.{a.name}", child.lineno, inner, child) for a in child.names)
            walk(child, inner)

    walk(TREES[module], False)
    return found


def own_imports() -> list[Import]:
    edges: dict[tuple[str, str, int], Import] = {}
    for module in MODULES:
        lines = MODULES[module].read_text().splitlines()
        for name, line, deferred, _node in imports_of(module):
            if name.split(".")[0] != "datamodels":
                continue
            target = resolve(name)
            if target is None or target == module or module.startswith(target + "."):
                continue  # a package's own __init__ is not an edge of its submodules
            edges.setdefault((module, target, line),
                             Import(module, target, line, deferred, lines[line - 1].strip()))
    return list(edges.values())


def test_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in own_imports():
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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

    for module in sorted(MODULES):
        if module not in index:
            connect(module)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down():
    upward = [e for e in own_imports() if layer_of(e.target) > layer_of(e.source)]
    assert not upward, "imports up the layers:\n" + "\n".join(map(repr, upward))


def _heavy_at_module_level() -> dict[str, set[str]]:
    """The heavy dependencies each module pulls in when imported (transitively)."""
    direct: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        direct[module] = set()
        # importing a.b.c runs the __init__ of a and a.b first
        parts = module.split(".")
        deps[module].update(".".join(parts[:i]) for i in range(1, len(parts)))
        for name, _line, deferred, _node in imports_of(module):
            if deferred:
                continue
            root = name.split(".")[0]
            if root in HEAVY:
                direct[module].add(root)
            elif root == "datamodels" and (target := resolve(name)) and target != module:
                deps[module].add(target)
    # the closure over the import graph, to a fixed point (packages and their submodules
    # import each other, so a memoised depth-first walk would stop early on a cycle)
    heavy = {module: set(found) for module, found in direct.items()}
    changed = True
    while changed:
        changed = False
        for module in MODULES:
            before = len(heavy[module])
            for dep in deps[module]:
                heavy[module] |= heavy[dep]
            changed |= len(heavy[module]) != before
    return heavy


def test_in_function_imports_only_defer_a_heavy_dependency():
    """An import of the package's own module inside a function must keep a heavy dependency
    (torch, ray, ffcv, matplotlib) out of its importer, and say which on its line."""
    heavy = _heavy_at_module_level()
    wrong = []
    for edge in own_imports():
        if not edge.deferred:
            continue
        deferred = heavy[edge.target] - heavy[edge.source]
        lines = MODULES[edge.source].read_text().splitlines()
        said = " ".join(lines[max(edge.line - 2, 0): edge.line])
        if not deferred or not any(name in said for name in deferred):
            wrong.append(f"{edge!r} (defers {sorted(deferred) or 'nothing'})")
    assert not wrong, (
        "in-function imports that defer no heavy dependency, or do not name it in a comment:\n"
        + "\n".join(wrong))


def test_no_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_ray_only_in_orchestrate():
    outside = [f"{m}:{line}" for m in MODULES for name, line, _d, _n in imports_of(m)
               if name.split(".")[0] == "ray" and not m.startswith("datamodels.orchestrate")]
    assert not outside, f"ray imported outside datamodels/orchestrate/: {outside}"


def _defines_stage(module: str) -> bool:
    tree = TREES[module]
    return any(isinstance(node, ast.ClassDef)
               and any(getattr(b, "id", getattr(b, "attr", "")) == "Stage" for b in node.bases)
               for node in tree.body)


def test_no_stage_imports_another_stage():
    stage_modules = {m for m in MODULES if m.startswith("datamodels.stages.") and _defines_stage(m)}
    assert len(stage_modules) >= 9, sorted(stage_modules)
    crossing = [e for e in own_imports() if e.source in stage_modules and e.target in stage_modules]
    assert not crossing, "stages importing stages:\n" + "\n".join(map(repr, crossing))


# the calls that change a run directory
WRITERS = {"write_table", "write_bytes_atomic", "write_table_atomic", "write_model_shard",
           "delete_dir", "move", "write_plan_masks"}


def test_run_directory_written_only_by_store_and_stages():
    outside = []
    for module, path in MODULES.items():
        section = module.split(".")[1] if "." in module else ""
        if section in {"store", "stages"}:
            continue
        for node in ast.walk(TREES[module]):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in WRITERS):
                where = path.relative_to(PACKAGE.parent)
                outside.append(f"{where}:{node.lineno} .{node.func.attr}(")
    assert not outside, "run directory written outside a stage:\n" + "\n".join(outside)


def test_import_datamodels_and_its_command_line_load_no_heavy_dependency():
    """What the deferred imports are for: ``import datamodels`` and the CLI's import (what
    ``datamodels --help`` pays) load none of torch, ray, ffcv, matplotlib."""
    import subprocess
    import sys

    probe = ("import sys, datamodels, datamodels.cli; "
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
