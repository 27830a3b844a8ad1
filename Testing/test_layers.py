"""The engine's layering, read from the source with `ast` (no module is imported to check it).

UHarmonyLib is a stack of layers; a module imports only from lower layers or from its own
package. Every import statement counts wherever it stands: module level, inside a
function, under `if TYPE_CHECKING:`, and `importlib.import_module("...")` with a literal
name. The engine never imports Slicer, Qt, CTK or VTK, and the Slicer module's MRML-side
logic (UHarmonySlicerLib) never imports Qt or CTK, so both run headless.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE = REPO / "UHarmonyLib"
SLICER_LIB = REPO / "UHarmonySlicer" / "UHarmonySlicerLib"

# lowest first; a module may import from a lower layer or from its own unit (package)
FOUNDATION = ("errors", "progress", "resources", "options")  # with UHarmonyLib/__init__.py
PACKAGES: dict[str, int] = {
    "files": 1,
    "image_harmonization": 2,
    "data": 3,
    "nn": 4,
    "model": 5,
    "inference": 6,
    "evaluation": 7,
    "training": 8,
    "diagnose": 9,  # diagnose and federated share a layer and must not import each other
    "federated": 9,
    "commands": 10,
}
ENTRY_POINTS = ("cli", "__main__")
ENTRY_LAYER = 11

ENGINE_FORBIDDEN = ("slicer", "qt", "ctk", "vtk", "PythonQt", "UHarmonySlicer", "UHarmonySlicerLib")
SLICER_LIB_FORBIDDEN = ("qt", "ctk", "PythonQt")


@dataclass(frozen=True)
class Import:
    file: Path  # the importing file
    line: int
    statement: str  # as written, for messages
    target: str  # absolute dotted name of the imported module


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a source file under `root`'s parent (a package's __init__ names the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path, root: Path, known: set[str]) -> list[Import]:
    """Every import in a file, resolved to absolute module names; `from a import b` names a.b when that is a module."""
    code = path.read_text(encoding="utf-8")
    tree = ast.parse(code, filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        text = ast.get_source_segment(code, node) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, text or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append(Import(path, node.lineno, text or "", sub if sub in known else module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            found.append(Import(path, node.lineno, ast.unparse(node), node.args[0].value))
    return found


def unit_of(module: str) -> tuple[str, int] | None:
    """(unit, layer) of an UHarmonyLib module; None for a module the layer table does not place."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation", 0
    head = parts[1]
    if head in FOUNDATION and len(parts) == 2:
        return "foundation", 0
    if head in ENTRY_POINTS and len(parts) == 2:
        return "entry points", ENTRY_LAYER
    if head in PACKAGES:
        return head, PACKAGES[head]
    return None


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _where(imp: Import) -> str:
    return f"{_rel(imp.file)}:{imp.line}: `{imp.statement}`"


def forbidden_imports(root: Path, banned: tuple[str, ...]) -> list[str]:
    known = {module_name(p, root) for p in source_files(root)}
    return [
        f"{_where(imp)} imports {imp.target}"
        for path in source_files(root)
        for imp in imports_of(path, root, known)
        if imp.target.split(".")[0] in banned
    ]


def layer_violations(root: Path) -> tuple[list[str], int, int]:
    """(messages, modules parsed, engine-internal imports seen) for the engine package at `root`."""
    files = source_files(root)
    known = {module_name(p, root) for p in files}
    problems: list[str] = []
    internal = 0
    foundation_edges: dict[str, set[str]] = {}
    for path in files:
        source = module_name(path, root)
        placed = unit_of(source)
        if placed is None:
            problems.append(f"{_rel(path)}: not in the layer table of Testing/test_layers.py: give it a layer")
            continue
        unit, layer = placed
        for imp in imports_of(path, root, known):
            if imp.target.split(".")[0] != root.name:
                continue
            internal += 1
            if imp.target not in known:
                problems.append(f"{_where(imp)} imports {imp.target}, which is no module of {root.name}")
                continue
            target_placed = unit_of(imp.target)
            assert target_placed is not None, imp  # every known module was placed above or reported
            target_unit, target_layer = target_placed
            if target_unit == unit:
                if unit == "foundation" and imp.target != source:
                    foundation_edges.setdefault(source, set()).add(imp.target)
                continue
            if target_layer >= layer:
                problems.append(
                    f"{_where(imp)}: {unit} (layer {layer}) imports {imp.target} "
                    f"({target_unit}, layer {target_layer}): imports go only to lower layers"
                )
    problems += [f"import cycle in the foundation layer: {' -> '.join(c)}" for c in _cycles(foundation_edges)]
    return problems, len(files), internal


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among the foundation modules (`UHarmonyLib` itself excluded: every submodule loads it first)."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            if "." in nxt:  # importing the package itself is not a cycle
                visit(nxt, [*stack, node])
        done.add(node)

    for start in sorted(edges):
        visit(start, [])
    return cycles


def test_engine_layers_point_down() -> None:
    problems, modules, internal = layer_violations(ENGINE)
    # guards against a check that passes by reading nothing
    assert modules > 50, f"only {modules} modules found under {ENGINE}"
    assert internal > 150, f"only {internal} engine-internal imports found"
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_every_layer_has_modules() -> None:
    """The table above names what exists: a renamed package would leave a layer checking nothing."""
    present = {p.name for p in ENGINE.iterdir() if (p / "__init__.py").is_file()}
    assert present == set(PACKAGES), f"packages {sorted(present)} vs layer table {sorted(PACKAGES)}"
    for name in (*ENTRY_POINTS, "errors", "progress", "resources"):
        assert (ENGINE / f"{name}.py").is_file(), name


def test_engine_never_imports_slicer_qt_or_vtk() -> None:
    assert len(source_files(ENGINE)) > 50
    problems = forbidden_imports(ENGINE, ENGINE_FORBIDDEN)
    assert not problems, "the engine must run without Slicer:\n" + "\n".join(problems)


def test_slicer_lib_never_imports_qt_or_ctk() -> None:
    files = source_files(SLICER_LIB)
    assert len(files) >= 8, files
    problems = forbidden_imports(SLICER_LIB, SLICER_LIB_FORBIDDEN)
    assert not problems, "UHarmonySlicerLib runs headless on slicer-core, without a GUI:\n" + "\n".join(problems)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A module-level, a function-level, a TYPE_CHECKING, a relative and an importlib import: all reported."""
    pkg = tmp_path / "UHarmonyLib"
    for sub in ("files", "training", "commands"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "training" / "loop.py").write_text("")
    (pkg / "commands" / "run.py").write_text("")
    (pkg / "files" / "bad.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            import importlib
            from UHarmonyLib.training import loop
            from .. import cli
            if TYPE_CHECKING:
                import UHarmonyLib.commands.run
            def f():
                from UHarmonyLib.commands import run
                import slicer
                return importlib.import_module("UHarmonyLib.training.loop")
            """
        )
    )
    problems, modules, _ = layer_violations(pkg)
    assert modules == 8
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [4, 5, 7, 9, 11], problems
    assert "UHarmonyLib/files/bad.py:5: `from .. import cli`: files (layer 1) imports UHarmonyLib.cli" in "\n".join(
        problems
    )
    assert [p.split(":")[1] for p in forbidden_imports(pkg, ENGINE_FORBIDDEN)] == ["10"]


def test_cards_and_options_load_without_torch() -> None:
    """The Slicer panel reads model cards (and builds options) before torch is installed."""
    modules = ["UHarmonyLib.model.card", "UHarmonyLib.nn.config", "UHarmonyLib.options"]
    script = textwrap.dedent(
        f"""
        import importlib, sys
        sys.modules["torch"] = None  # any import of torch or monai now raises ImportError
        sys.modules["monai"] = None
        for name in {modules!r}:
            importlib.import_module(name)
        assert not [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "monai")]
        print("ok", len({modules!r}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == f"ok {len(modules)}"
