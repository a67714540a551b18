"""The layout's rules (docs/compiler.md), read from the source's own imports.

No import cycles; no module imports another module's ``_private`` name; no compiler stage
imports a later one; the compiler imports nothing from the front door, the zoo or eval; no
file in flashlight_hf/ over 500 lines. Checked statically (``ast``), so the whole tree is
covered, including modules no other test imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level folders installed as flashlight_hf sub-packages (pyproject's package-dir)
MOUNTED = {"eval": "flashlight_hf.eval", "model_zoo": "flashlight_hf.model_zoo", "patches": "flashlight_hf.patches"}
MAX_LINES = 500

# compiler modules by stage: a module may import its own stage or earlier ones only
STAGES = {
    "flashlight_hf.settings": 0, "flashlight_hf.version": 0, "flashlight_hf.compiler.abi": 0,
    "flashlight_hf.compiler.capture": 1, "flashlight_hf.compiler.ir": 2, "flashlight_hf.compiler.rewrite": 3,
    "flashlight_hf.compiler.codegen": 4, "flashlight_hf.compiler.runtime": 5,
    "flashlight_hf.compiler.cache": 6, "flashlight_hf.compiler.guards": 6, "flashlight_hf.compiler.driver": 7,
    "flashlight_hf.compiler.compiled": 8, "flashlight_hf.compiler.dynamo": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "flashlight_hf").rglob("*.py")):
        out[_name(path.relative_to(ROOT).with_suffix("").parts)] = path
    for folder, package in MOUNTED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            out[_name((*package.split("."), *parts))] = path
    return out


def _name(parts: tuple[str, ...]) -> str:
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = _modules()


def _imports(module: str, *, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _owner(target: str) -> str | None:
    """The module of ours ``target`` names (a module, or a package's ``__init__``)."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def _edges(module: str, *, top_level_only: bool) -> list[tuple[str, int]]:
    edges = []
    for target, names, line in _imports(module, top_level_only=top_level_only):
        if not target.startswith("flashlight_hf"):
            continue
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        edges += [(s, line) for s in subs]  # ``from pkg import submodule``
        if len(subs) < len(names) or not names:  # names defined by the module (or its __init__)
            owner = _owner(target)
            if owner is not None and owner != module:
                edges.append((owner, line))
    return edges


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in _edges(m, top_level_only=True)}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_name():
    bad = []
    for m in MODULES:
        for target, names, line in _imports(m, top_level_only=False):
            if _owner(target) in (None, m):
                continue
            bad += [f"{m}:{line} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "make these public (with a docstring) where another module needs them:\n" + "\n".join(bad)


def _stage(module: str) -> int | None:
    for prefix, stage in sorted(STAGES.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return stage
    return None


def test_no_stage_imports_a_later_one():
    bad = []
    for m in MODULES:
        own = _stage(m)
        if own is None:
            continue
        for target, line in _edges(m, top_level_only=False):
            other = _stage(target)
            if other is not None and other > own:
                bad.append(f"{m}:{line} (stage {own}) imports {target} (stage {other})")
    assert not bad, "data flows one way through the stages:\n" + "\n".join(bad)


@pytest.mark.parametrize("forbidden", ["flashlight_hf.transformers", "flashlight_hf.eval", "flashlight_hf.model_zoo",
                                       "flashlight_hf.patches", "transformers"])
def test_the_compiler_does_not_import(forbidden: str):
    bad = [f"{m}:{line}" for m in MODULES if m.startswith("flashlight_hf.compiler")
           for target, _, line in _imports(m, top_level_only=False)
           if target == forbidden or target.startswith(forbidden + ".")]
    assert not bad, f"the compiler must not depend on {forbidden}: {bad}"


def test_no_file_in_the_package_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "flashlight_hf").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def _our_private_attributes() -> set[str]:
    """``_names`` our classes define: methods, class attributes and ``self._x = ...``."""
    names: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_benchmarks_read_no_private_attribute_of_ours():
    """Benchmarks use public hooks (``CompiledAttention.builds()``, ``CompiledKernel.plans()``)."""
    ours = _our_private_attributes()
    assert {"_plans", "_builds", "_lookup"} & ours  # the check knows what it looks for
    bad = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ours:
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in ours:  # wrap(obj, "_name", ...)
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not bad, "benchmarks must not read flashlight's private attributes:\n" + "\n".join(bad)


def test_the_rules_see_the_tree():
    """The checks above are vacuous if the module walk finds nothing."""
    assert "flashlight_hf.compiler.ir.from_fx.labeller" in MODULES
    assert "flashlight_hf.patches" in MODULES and "flashlight_hf.eval.cli" in MODULES
    assert any(
        t == "flashlight_hf.compiler.ir" for t, _ in _edges("flashlight_hf.compiler.rewrite.online", top_level_only=True))
