"""Shared fixtures: tiny randomly initialized model bundles, synthetic volumes, CLI runners."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from UHarmonyLib import cli
from UHarmonyLib.model.weights import make_card, save_bundle
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.harmony_layer import HarmonyNorm
from UHarmonyLib.nn.heads import GatedHead
from UHarmonyLib.nn.network import UHarmonyNet

REPO = Path(__file__).resolve().parent.parent

# Tiny tensors: one intra-op thread avoids thread wake-up costs that dominate on small shared CPUs.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `slow` test first, each file's own order kept: `make test`'s workers take whole files in
    collection order, so the minutes-long ones start at once instead of one of them running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


TINY_ARCH: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 3,
    "num_sites": 3,
    "filters": (4, 8, 16),
    "gate_hidden": 8,
}
SITES = [{"name": "alpha", "scanner": "1.5T"}, {"name": "beta"}, {"name": "gamma"}]
CHANNELS = [{"name": "FLAIR", "modality": "MR"}]
LABELS = [
    {"value": 1, "name": "lesion core", "color": "#ff0000"},
    {"value": 2, "name": "perilesional edema", "color": "#00c0ff"},
]
PATCH = 16

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# index axis 0 -> -y, axis 1 -> +z, axis 2 -> -x (rows are physical x, y, z): a proper rotation
PERMUTED_FLIPPED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


# a truly oblique direction: the permutation above, then tilted by 17 degrees about (1, 2, 3)
OBLIQUE = tuple(float(v) for v in (_rotation((1.0, 2.0, 3.0), 17.0) @ np.reshape(PERMUTED_FLIPPED, (3, 3))).ravel())


def model_space_spacing(spacing: Sequence[float], direction: Sequence[float]) -> list[float]:
    """Spacing along physical x, y, z after reorientation: each index axis goes to its dominant physical axis."""
    d = np.abs(np.reshape(direction, (3, 3)))
    rows = [int(np.argmax(d[:, i])) for i in range(3)]
    assert sorted(rows) == [0, 1, 2], "direction has no unambiguous nearest axis permutation"
    out = [0.0, 0.0, 0.0]
    for i, r in enumerate(rows):
        out[r] = float(spacing[i])
    return out


def blob_array(size_xyz: Sequence[int], seed: int = 0) -> np.ndarray:
    """A brain-like (z, y, x) float32 array: a noisy ellipsoid on zero background with a few bright blobs."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij", sparse=False
    )
    head = (x / 0.85) ** 2 + (y / 0.8) ** 2 + (z / 0.9) ** 2 <= 1.0
    img = np.where(head, 100.0, 0.0) + head * rng.normal(0.0, 8.0, head.shape)
    for _ in range(3):
        cx, cy, cz = rng.uniform(-0.45, 0.45, 3)
        r = rng.uniform(0.15, 0.3)
        img += head * 120.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * r * r))
    return img.astype(np.float32)


def make_image(
    array_zyx: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = IDENTITY,
) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def write_volume_file(
    path: Path,
    size: Sequence[int] = (24, 20, 16),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = IDENTITY,
    seed: int = 0,
    array_zyx: np.ndarray | None = None,
) -> Path:
    """Write a synthetic blob volume (or the given array) with this geometry; returns the path."""
    array = blob_array(size, seed) if array_zyx is None else array_zyx
    sitk.WriteImage(make_image(array, spacing, origin, direction), str(path))
    return Path(path)


def diversify_sites(net: UHarmonyNet, scale: float = 0.3) -> None:
    """Give every site its own harmony coefficients and head, so the site weights matter."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, HarmonyNorm):
                m.coef.add_(scale * torch.randn_like(m.coef))
                m.bias.add_(scale * torch.randn_like(m.bias))
            elif isinstance(m, GatedHead):
                m.weight.add_(scale * torch.randn_like(m.weight))
                m.bias.add_(scale * torch.randn_like(m.bias))


def tiny_net(seed: int = 0, **overrides: Any) -> UHarmonyNet:
    """A tiny randomly initialized U-Harmony network (DynUNet backbone unless overridden)."""
    torch.manual_seed(seed)
    net = UHarmonyNet(NetworkConfig(**{**TINY_ARCH, **overrides}))
    diversify_sites(net)
    return net.eval()


def save_tiny_bundle(
    path: Path,
    net: UHarmonyNet,
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    patch: int = PATCH,
    overlap: float = 0.25,
    name: str = "tiny",
) -> Path:
    card = make_card(
        net,
        name=name,
        version=1,
        channels=CHANNELS[: net.config.in_channels],
        labels=LABELS[: net.config.out_channels - 1],
        sites=SITES[: net.config.num_sites],
        description="tiny random test model",
        preprocessing={"spacing": [float(s) for s in spacing]},
        inference={"patch_size": [patch] * 3, "overlap": overlap, "batch_size": 2},
    )
    return save_bundle(net, card, path)


BundleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory) -> BundleFactory:
    """Tiny bundles saved once per session, keyed by card spacing, seed and patch size."""
    cache: dict[tuple, Path] = {}

    def get(spacing: Sequence[float] = (1.5, 1.5, 1.5), seed: int = 0, patch: int = PATCH) -> Path:
        key = (tuple(round(float(s), 6) for s in spacing), seed, patch)
        if key not in cache:
            folder = tmp_path_factory.mktemp("bundles") / f"tiny-{len(cache)}"
            cache[key] = save_tiny_bundle(folder, tiny_net(seed), spacing=spacing, patch=patch)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def two_channel_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle of two channels, T1 then FLAIR (absent channels, channel geometry)."""
    net = tiny_net(in_channels=2)
    card = make_card(
        net,
        name="two",
        version=1,
        channels=[{"name": "T1", "modality": "MR"}, {"name": "FLAIR", "modality": "MR"}],
        labels=LABELS,
        sites=SITES,
        preprocessing={"spacing": [1.5, 1.5, 1.5]},
        inference={"patch_size": [16] * 3, "overlap": 0.25},
    )
    return save_bundle(net, card, tmp_path_factory.mktemp("two") / "two-v1")


@pytest.fixture(scope="session")
def tiny_bundle(bundle_factory: BundleFactory) -> Path:
    """The default tiny bundle: card spacing 1.5 mm isotropic, patch 16."""
    return bundle_factory()


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    """A small blob volume at 1.5 mm isotropic (the default tiny bundle's spacing)."""
    return write_volume_file(tmp_path / "case.nrrd", size=(24, 20, 16), spacing=(1.5, 1.5, 1.5), origin=(3, -7, 11))


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_main(*args: Any) -> CliRun:
    """`uharmony ARGS` in this process (UHarmonyLib.cli.main), with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return CliRun(code, out.getvalue(), err.getvalue())


def run_subprocess(*args: Any) -> CliRun:
    """`python -m UHarmonyLib ARGS` as a real child process."""
    env = {k: v for k, v in os.environ.items() if k != "UHARMONY_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "UHarmonyLib", *[str(a) for a in args]],
        capture_output=True,
        encoding="utf-8",
        cwd=REPO,
        env=env,
        timeout=300,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: CliRun) -> str:
    """A refused command: non-zero exit and exactly one stderr line starting 'uharmony: error:'."""
    assert run.code != 0, run
    lines = run.stderr_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("uharmony: error: "), lines
    return lines[0]


def assert_same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol, rtol=0)


def results_renderer(figure_file: str) -> Callable[[dict[str, Any]], list[str]]:
    """The renderer scripts/results_md.py registers for docs/results/FIGURE_FILE, loaded from its file."""
    spec = importlib.util.spec_from_file_location("results_md", REPO / "scripts" / "results_md.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RENDERERS[figure_file]


def is_fraction(value: Any) -> bool:
    """A finite number in [0, 1], as every Dice, accuracy and share in the figure files must be."""
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0
