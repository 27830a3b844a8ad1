"""MR signal from tissue properties: why a protocol change alters tissue contrast, not just intensity scale.

Each tissue class has a proton density (PD) and T1/T2 relaxation times at 1.5 T and 3 T;
a site's sequences (spin echo, inversion recovery, spoiled gradient echo, MPRAGE-like)
turn them into signal through the standard steady-state signal equations, so a different
TR, TE, TI, flip angle or field strength changes the order and spacing of tissue
intensities the way real protocols do. Partial-volume voxels mix the signals of their
tissues (separate water compartments), not their relaxation times. Sources and rounding
are stated in docs/synthetic-data.md ("MR-physics sites").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

PHYSICS_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")  # the MSD brain-tumour names, in its order
BRATS_NAMES = {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}  # the same channels in BraTS files
CONTRAST_CHANNEL = "t1gd"  # acquired after gadolinium: T1 shortening in enhancing tissue
PHYSICS_TISSUES = ("csf", "gm", "wm", "edema", "necrosis", "enhancing")
SEQUENCES = ("se", "ir", "spgr", "mprage")
FIELD_STRENGTHS = (1.5, 3.0)
T2STAR_OVER_T2 = 0.7  # gradient echoes decay with T2* < T2; one ratio for every tissue keeps TE's effect monotone


@dataclass(frozen=True)
class Tissue:
    pd: float  # water content relative to CSF
    t1_ms: float
    t2_ms: float


# Rounded literature values (docs/synthetic-data.md cites them); lesion compartments lie in the
# reported ranges for vasogenic edema, necrosis and enhancing tumour (pre-contrast).
PROPERTIES: dict[float, dict[str, Tissue]] = {
    1.5: {
        "csf": Tissue(1.00, 4300.0, 2000.0),
        "gm": Tissue(0.80, 1124.0, 95.0),
        "wm": Tissue(0.69, 884.0, 72.0),
        "edema": Tissue(0.83, 1250.0, 140.0),
        "necrosis": Tissue(0.92, 2300.0, 300.0),
        "enhancing": Tissue(0.80, 1150.0, 110.0),
    },
    3.0: {
        "csf": Tissue(1.00, 4300.0, 1800.0),
        "gm": Tissue(0.80, 1820.0, 99.0),
        "wm": Tissue(0.69, 1084.0, 69.0),
        "edema": Tissue(0.83, 1600.0, 130.0),
        "necrosis": Tissue(0.92, 2600.0, 280.0),
        "enhancing": Tissue(0.80, 1500.0, 105.0),
    },
}
GD_R1 = {1.5: 4.1, 3.0: 3.7}  # gadolinium T1 relaxivity in plasma, L/(mmol s)


@dataclass(frozen=True)
class Sequence:
    """One channel's pulse sequence and its parameters (ms, degrees)."""

    kind: str  # se, ir, spgr, mprage
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None  # ir, mprage
    flip_deg: float | None = None  # spgr

    def jittered(self, rng: np.random.Generator, amount: float) -> Sequence:
        """The protocol as one case was run: every parameter off by a relative N(0, amount), within +-3 sd."""

        def vary(v: float) -> float:
            return v * (1.0 + amount * float(np.clip(rng.standard_normal(), -3, 3)))

        return replace(
            self,
            tr_ms=vary(self.tr_ms),
            te_ms=vary(self.te_ms),
            ti_ms=None if self.ti_ms is None else vary(self.ti_ms),
            flip_deg=None if self.flip_deg is None else vary(self.flip_deg),
        )

    @property
    def ti(self) -> float:
        if self.ti_ms is None:
            raise ValueError(f"a {self.kind} sequence needs an inversion time")
        return self.ti_ms

    @property
    def flip(self) -> float:
        if self.flip_deg is None:
            raise ValueError(f"a {self.kind} sequence needs a flip angle")
        return self.flip_deg


DEFAULT_SEQUENCES: dict[float, dict[str, Sequence]] = {
    3.0: {
        "FLAIR": Sequence("ir", 9000.0, 120.0, ti_ms=2500.0),
        "T1w": Sequence("mprage", 2300.0, 3.0, ti_ms=1100.0),
        "t1gd": Sequence("mprage", 2300.0, 3.0, ti_ms=1100.0),
        "T2w": Sequence("se", 5000.0, 100.0),
    },
    1.5: {
        "FLAIR": Sequence("ir", 9000.0, 110.0, ti_ms=2450.0),
        "T1w": Sequence("mprage", 2000.0, 4.0, ti_ms=800.0),
        "t1gd": Sequence("mprage", 2000.0, 4.0, ti_ms=800.0),
        "T2w": Sequence("se", 4000.0, 100.0),
    },
}


@dataclass(frozen=True)
class Physics:
    """A site that acquires by MR physics: field strength, sequences per channel, per-case variation, artifacts."""

    field_t: float = 3.0
    sequences: dict[str, Sequence] = field(default_factory=lambda: dict(DEFAULT_SEQUENCES[3.0]))
    jitter: float = 0.03  # relative sd of every sequence parameter, per case
    tissue_jitter: float = 0.03  # relative sd of each tissue's PD, T1 and T2, per case
    texture: float = 0.03  # amplitude of smooth within-tissue variation of PD, T1 and T2
    kspace: tuple[float, float, float] = (1.0, 1.0, 1.0)  # kept fraction of k-space along R-L, A-P, S-I
    dose_mm: float = 0.3  # gadolinium concentration in enhancing tissue, mmol/L (t1gd)
    anatomy_scale: float = 0.04  # sd of the per-case brain size along each axis (relative)
    skull_strip: bool = True  # exactly zero outside the brain, as skull-stripped clinical data are


def signal(seq: Sequence, pd: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Magnitude signal of the steady-state equations (MPRAGE-like: phase-sensitive, negative values clipped)."""
    e1 = np.exp(-seq.tr_ms / t1)
    t2_decay = T2STAR_OVER_T2 * t2 if seq.kind in ("spgr", "mprage") else t2
    decay = np.exp(-seq.te_ms / t2_decay)
    if seq.kind == "se":
        return pd * (1.0 - e1) * decay
    if seq.kind == "ir":
        return pd * np.abs(1.0 - 2.0 * np.exp(-seq.ti / t1) + e1) * decay
    if seq.kind == "spgr":
        a = math.radians(seq.flip)
        return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * decay
    if seq.kind == "mprage":
        return pd * np.maximum(1.0 - 2.0 * np.exp(-seq.ti / t1) + e1, 0.0) * decay
    raise ValueError(f"unknown sequence '{seq.kind}' (known: {', '.join(SEQUENCES)})")


def tissue_properties(physics: Physics, channel: str, rng: np.random.Generator | None = None) -> dict[str, Tissue]:
    """The tissues one case has in `channel`: per-case variation when `rng` is given, gadolinium in t1gd."""
    out = {}
    for name, t in PROPERTIES[physics.field_t].items():
        if rng is not None and physics.tissue_jitter > 0:
            f = 1.0 + physics.tissue_jitter * np.clip(rng.standard_normal(3), -3, 3)
            t = Tissue(t.pd * f[0], t.t1_ms * f[1], t.t2_ms * f[2])
        if channel == CONTRAST_CHANNEL and name == "enhancing":
            r1 = 1000.0 / t.t1_ms + GD_R1[physics.field_t] * physics.dose_mm  # 1/s
            t = Tissue(t.pd, 1000.0 / r1, t.t2_ms)
        out[name] = t
    return out


NORMAL_TISSUES = ("csf", "gm", "wm")


def _raw_signals(physics: Physics, channel: str) -> dict[str, float]:
    seq = physics.sequences[channel]
    props = tissue_properties(physics, channel)
    return {n: float(signal(seq, np.float64(t.pd), np.float64(t.t1_ms), np.float64(t.t2_ms))) for n, t in props.items()}


def nominal_signals(physics: Physics, channel: str) -> dict[str, float]:
    """Each tissue's signal under the site's nominal protocol (no jitter, texture, noise), in the channel's units:
    the brightest normal tissue (CSF, GM or WM) is 1, so noise means the same in every channel and lesions may
    be brighter than 1."""
    raw = _raw_signals(physics, channel)
    top = max(raw[n] for n in NORMAL_TISSUES)
    return {n: v / top for n, v in raw.items()}


def channel_signal(
    physics: Physics,
    channel: str,
    fractions: dict[str, np.ndarray],
    textures: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """One channel's noise-free signal on the generation grid: tissue fractions mix their tissues' signals.

    The scale is nominal_signals' (the site's brightest normal tissue = 1), so per-case protocol
    and tissue variation shows as intensity change, and noise means the same in every sequence.
    """
    seq = physics.sequences[channel].jittered(rng, physics.jitter)
    props = tissue_properties(physics, channel, rng)
    nominal = _raw_signals(physics, channel)
    reference = max(nominal[n] for n in NORMAL_TISSUES)
    d_pd, d_t1, d_t2 = (1.0 + physics.texture * t for t in textures)
    out = np.zeros(next(iter(fractions.values())).shape, np.float32)
    for name, frac in fractions.items():
        inside = frac > 1e-4
        if not inside.any():
            continue
        t = props[name]
        s = signal(seq, t.pd * d_pd[inside], t.t1_ms * d_t1[inside], t.t2_ms * d_t2[inside])
        out[inside] += (frac[inside] * s / reference).astype(np.float32)
    return out


def truncate_kspace(image: np.ndarray, keep: tuple[float, float, float]) -> np.ndarray:
    """Keep the central fraction of k-space per numpy axis: lower resolution with Gibbs ringing at edges."""
    if all(k >= 1.0 for k in keep):
        return image
    spectrum = np.fft.fftshift(np.fft.fftn(image))
    for axis, k in enumerate(keep):
        if k >= 1.0:
            continue
        n = image.shape[axis]
        half = max(1, round(n * k / 2))
        window = np.zeros(n, bool)
        window[n // 2 - half : n // 2 + half] = True
        shape = [1] * image.ndim
        shape[axis] = n
        spectrum *= window.reshape(shape)
    return np.abs(np.fft.ifftn(np.fft.ifftshift(spectrum))).astype(np.float32)
