"""Checkpoints of an unfinished run: safetensors + JSON, never pickle, written atomically.

A checkpoint is a folder `step-NNNNNNNN/` in the run's work folder holding
`state.safetensors` (model weights, the optimizer's tensors, torch's RNG state),
`best.safetensors` (the best validated weights so far, if any) and `state.json`
(step, scheduler, optimizer scalars and param groups, best score, loss curve, the
run's settings and runtime choices, and the sha256 of both weight files). It is written into a hidden
temporary folder, synced, and renamed into place in one step, so a folder with a
`step-` name is always complete; older checkpoints are removed only after that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.model.weights import unique_state

FORMAT = 1
STATE, BEST, META = "state.safetensors", "best.safetensors", "state.json"
NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class Checkpoint:
    """A verified checkpoint read back from disk."""

    path: Path
    step: int
    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor | None
    best_model: dict[str, torch.Tensor] | None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (safetensors tensors, JSON scalars and param groups)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of flatten_optimizer: a state dict `Optimizer.load_state_dict` takes."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def checkpoints(work: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not work.is_dir():
        return []
    return sorted(p for p in work.iterdir() if p.is_dir() and NAME.match(p.name))


def remove_stale(work: Path) -> None:
    """Temporary folders of a checkpoint that was being written when the run died."""
    for p in work.iterdir():
        if p.is_dir() and p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    work: Path,
    step: int,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    best_model: dict[str, torch.Tensor] | None,
) -> Path:
    """Write `work/step-NNNNNNNN/` atomically and drop older checkpoints; returns its path."""
    work.mkdir(parents=True, exist_ok=True)
    previous = checkpoints(work)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=work))
    try:
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in unique_state(net).items()}
        tensors.update(opt_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / STATE))
        files = {STATE: sha256_file(tmp / STATE)}
        if best_model is not None:
            best_step = (meta.get("best") or {}).get("step")
            prev = previous[-1] if previous else None
            prev_meta = json.loads((prev / META).read_text()) if prev else {}
            if prev and (prev_meta.get("best") or {}).get("step") == best_step and (prev / BEST).is_file():
                os.link(prev / BEST, tmp / BEST)  # unchanged since the last checkpoint: share the file
            else:
                save_file({k: v.contiguous().cpu() for k, v in best_model.items()}, str(tmp / BEST))
            files[BEST] = sha256_file(tmp / BEST)
        body = {**meta, "format": FORMAT, "step": step, "optimizer": opt_meta, "files": files}
        (tmp / META).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        final = work / f"step-{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(work)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in previous:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def newest_meta(work: Path) -> dict[str, Any] | None:
    """The newest checkpoint's state.json (unverified: load_checkpoint checks it); None when there is none."""
    found = checkpoints(work)
    if not found:
        return None
    try:
        meta = json.loads((found[-1] / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"{found[-1]}: damaged checkpoint ({e}); remove it to restart from an earlier one or from 0"
        ) from e
    if not isinstance(meta, dict):
        raise InputError(f"{found[-1]}: damaged checkpoint ({META} is not an object)")
    return meta


def load_checkpoint(work: Path) -> Checkpoint | None:
    """The newest checkpoint in `work`, verified against its checksums; None when there is none."""
    found = checkpoints(work)
    if not found:
        return None
    path = found[-1]
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        for name, digest in meta["files"].items():
            if sha256_file(path / name) != digest:
                raise ValueError(f"{name} checksum differs")
        tensors = load_file(str(path / STATE))
        best = load_file(str(path / BEST)) if BEST in meta["files"] else None
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise InputError(f"{path}: damaged checkpoint ({e}); remove it to restart from an earlier one or from 0") from e
    if meta.get("format", 0) > FORMAT:
        raise InputError(f"{path}: checkpoint written by a newer UHarmony (format {meta['format']})")
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        meta=meta,
        model=model,
        optimizer=unflatten_optimizer(tensors, meta["optimizer"]),
        rng=tensors.get("rng/torch"),
        best_model=best,
    )
