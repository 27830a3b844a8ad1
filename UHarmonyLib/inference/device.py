"""Device and precision choice: CUDA with autocast when present, else CPU bfloat16 where supported and safe."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from UHarmonyLib.errors import InputError


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; Apple's MPS only when asked for (`mps`), as nnU-Net does."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: no Apple GPU (MPS) is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {name}: unknown device (use auto, cpu, cuda or mps)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """bfloat16 pays off on CPU only with native support (AVX-512 BF16 or AMX)."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p is not None and p() for p in probes)


# Measured on the development CPU (AMX): SwinUNETR trains in float32 at 3.9 s per 64^3 step of batch 2 against
# 4.4 s under bfloat16 autocast, where its norms run in bfloat16 and the 2x2x2-voxel bottleneck's instance norms
# send gradients to 1e31 and beyond (NaN weights within a few steps). "auto" keeps it in float32 on CPUs.
CPU_FLOAT32_BACKBONES = ("swinunetr",)


def resolve_precision(name: str, device: torch.device, backbone: str = "dynunet") -> torch.dtype:
    """The autocast dtype for `--precision NAME` (float32: no autocast) for a network of `backbone`."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if name != "auto":
        raise InputError(f"--precision {name}: unknown precision (use auto, float32, bfloat16 or float16)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float32  # no autocast on MPS for "auto": 3-D convolutions are safest in float32 there
    return torch.bfloat16 if cpu_has_bf16() and backbone not in CPU_FLOAT32_BACKBONES else torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
