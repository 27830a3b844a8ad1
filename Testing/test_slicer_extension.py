"""The extension as shipped: CMake file lists, requirements, the dependency check, loading before PyTorch, models."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from slicer_helpers import MODULE_DIR, REPO
from UHarmonySlicerLib import dependencies, engine
from UHarmonySlicerLib.models import default_folders, discover, next_version_folder, read_model

from UHarmonyLib.resources import DEFAULT_MODEL_NAME

ENGINE_DIR = REPO / "UHarmonyLib"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"


def cmake_list(text: str, variable: str) -> list[str]:
    """The items of `set(VARIABLE item ...)`, comments dropped."""
    match = re.search(rf"set\({variable}\s(.*?)\)", text, re.S)
    assert match, f"no set({variable} ...) in {MODULE_CMAKE}"
    return [w for line in match.group(1).splitlines() for w in line.split("#", 1)[0].split()]


def python_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_cmake_lists_every_python_file_and_resource() -> None:
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    module = [s.replace("${MODULE_NAME}", "UHarmonySlicer") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    assert sorted(module) == python_files(MODULE_DIR)
    assert sorted(cmake_list(text, "ENGINE_PYTHON_SCRIPTS")) == python_files(ENGINE_DIR)
    resources = [s.replace("${MODULE_NAME}", "UHarmonySlicer") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    shipped = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())
    assert sorted(resources) == shipped
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}.*WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top and "\nadd_subdirectory(UHarmonySlicer)\n" in top
    icon = re.search(r'EXTENSION_ICONURL "[^"]+/main/([^"]+)"', top).group(1)
    assert (REPO / icon).is_file()


def test_icon_is_a_128_pixel_png() -> None:
    icon = sitk.ReadImage(str(MODULE_DIR / "Resources" / "Icons" / "UHarmonySlicer.png"))
    assert icon.GetSize() == (128, 128)


def test_requirements_have_floors_and_leave_slicers_own_packages_alone(tmp_path: Path) -> None:
    requirements = dependencies.read_requirements(REQUIREMENTS)
    names = {r.name.lower() for r in requirements}
    assert {"monai", "safetensors"} <= names
    assert not names & {"torch", "simpleitk", "numpy", "vtk"}
    assert dependencies.missing(requirements) == []  # this venv has them all
    wanting = tmp_path / "requirements.txt"
    wanting.write_text("monai>=99.0  # far future\nno-such-package-uharmony>=1\n\nsafetensors>=0.4\n")
    assert [r.name for r in dependencies.missing(dependencies.read_requirements(wanting))] == [
        "monai",
        "no-such-package-uharmony",
    ]
    wanting.write_text("monai<2\n")
    with pytest.raises(ValueError, match=r"requirements.txt:1: expected 'name>=version'"):
        dependencies.read_requirements(wanting)
    assert not dependencies.torch_missing()


def test_installs_pin_slicers_numpy_simpleitk_vtk_and_torch(tmp_path: Path) -> None:
    pins = dependencies.protected_constraints()
    assert f"numpy=={np.__version__}" in pins and f"SimpleITK=={sitk.Version.VersionString()}" in pins
    assert f"torch=={torch.__version__}" in pins and f"vtk=={importlib.metadata.version('vtk')}" in pins
    missing = dependencies.read_requirements(REQUIREMENTS)[:1]
    assert dependencies.pip_arguments([missing[0].text], tmp_path / "c.txt") == [
        missing[0].text,
        "--constraint",
        str(tmp_path / "c.txt"),
    ]
    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0) and dependencies.version_tuple("1.6rc1") == (1, 6)


def _panel_imports() -> list[str]:
    """Every UHarmonySlicerLib module the module file imports (what opening the panel loads)."""
    tree = ast.parse((MODULE_DIR / "UHarmonySlicer.py").read_text(encoding="utf-8"))
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    package = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "UHarmonySlicerLib"]
    found |= {f"UHarmonySlicerLib.{a.name}" for n in package for a in n.names}  # from UHarmonySlicerLib import x
    return sorted(m for m in found if m and m.startswith("UHarmonySlicerLib."))


@pytest.mark.parametrize("blocked", [True, False], ids=["fresh-slicer", "torch-installed"])
def test_opening_the_panel_lists_verified_models_without_importing_torch(blocked: bool) -> None:
    """As in a fresh Slicer (torch, MONAI, safetensors, SciPy, psutil absent) cards are still verified and described;
    where they are installed, opening the panel still does not import torch or MONAI into Slicer's process."""
    modules = _panel_imports()
    assert {"UHarmonySlicerLib.models", "UHarmonySlicerLib.segment", "UHarmonySlicerLib.install"} <= set(modules)
    block = 'for name in ("torch", "monai", "safetensors", "scipy", "psutil"):\n    sys.modules[name] = None'
    script = f"""
import importlib, sys
{block if blocked else ""}
sys.path.insert(0, {str(MODULE_DIR)!r})
for module in {modules!r}:
    importlib.import_module(module)
from UHarmonySlicerLib.models import default_folders, discover
models = discover(default_folders())
texts = [m.summary() for m in models]
print(all(m.usable for m in models), ",".join(models[0].channel_names), "SNOMED CT" in texts[0])
print(*sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "monai") and sys.modules[n] is not None))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["True flair,t1,t1ce,t2 True", ""]


def test_bundled_and_user_models_are_discovered(tmp_path: Path) -> None:
    user = tmp_path / "models"
    broken = user / "broken-v1"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{ not json")
    models = discover(default_folders(user))
    assert [m.path.name for m in models] == [DEFAULT_MODEL_NAME, "uharmony-starter-v1", "broken-v1"]
    default = models[0]
    assert default.usable and default.channel_names == ["flair", "t1", "t1ce", "t2"]
    summary = default.summary()
    for part in (default.title, "hospital-3t-3d, hospital-1.5t-2d", "flair (MR), t1 (MR), t1ce (MR)", "1 lesion core",
                 "About: uharmony dynunet trained by uharmony train on 64 cases",
                 "Grid: 2 x 2 x 2 mm; windows of 64 x 64 x 64 voxels",
                 "Checked when trained: whole-lesion Dice 0.856 on 12 held-out cases, gate accuracy 1.0",
                 "1 lesion core (SNOMED CT 108369006 Neoplasm), 2 edema (SNOMED CT 79654002 Edema)",
                 "Time per case: CPU about 4 s (10 s with 4 mirrored passes",
                 "NVIDIA GPU (CUDA) not measured"):  # fmt: skip
        assert part in summary, summary
    assert not models[2].usable and "not valid JSON" in models[2].problem
    assert "cannot be used" in models[2].summary() and "(unusable)" in models[2].display_name
    name, version = DEFAULT_MODEL_NAME.rsplit("-v", 1)
    (user / DEFAULT_MODEL_NAME).mkdir()  # a half-written folder still takes its version number
    assert next_version_folder(default, default_folders(user)[:1], user) == user / f"{name}-v{int(version) + 1}"
    assert read_model(tmp_path / "nowhere").problem.endswith("model bundle not found")


def test_a_source_checkout_finds_the_engine_at_the_repository_root() -> None:
    """Slicer pointed at <repo>/UHarmonySlicer: no pip install, no site-packages, still the engine and its models."""
    script = f"""
import sys
sys.path.insert(0, {str(MODULE_DIR)!r})
import UHarmonySlicerLib
import UHarmonyLib.resources
print(UHarmonyLib.resources.BUNDLED_MODELS)
"""
    run = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(REPO / "Resources" / "Models")


def test_engine_command_line_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Slicer, PythonSlicer is not on PATH: this interpreter runs the engine, with the engine importable."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    command = engine.engine_command("segment", Path("a b.nrrd"), "--site", "auto")
    assert command == [
        sys.executable,
        "-m",
        "UHarmonyLib",
        "segment",
        "a b.nrrd",
        "--site",
        "auto",
        "--progress",
        "json",
    ]
    cpu, auto = engine.engine_environment("cpu"), engine.engine_environment("auto")
    assert cpu["CUDA_VISIBLE_DEVICES"] == "-1" and "CUDA_VISIBLE_DEVICES" not in auto
    assert auto["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert engine.parse_line('{"event": "progress", "stage": "gate", "done": 1, "total": 4}\n')["done"] == 1
    assert engine.parse_line("Traceback (most recent call last):\n") == {
        "event": "output",
        "message": "Traceback (most recent call last):",
    }
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        engine.Job(lambda temp: iter(()), device="gpu")
