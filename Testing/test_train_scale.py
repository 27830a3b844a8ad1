"""Training at scale: streamed cases and worker processes make the in-memory batches and bundle; two torchrun
processes (gloo, CPU) train the single-process steps, and their checkpoint continues in one process.

Real synthetic datasets at 4 mm, tiny DynUNets (filters 4 8 16, patch 32) in float32, one
thread per process; the distributed runs are real `torchrun` process groups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, assert_one_line_error, run_main
from safetensors.torch import load_file

from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.training import TrainConfig, train
from UHarmonyLib.training.batch_stream import training_batches
from UHarmonyLib.training.checkpoint import checkpoints
from UHarmonyLib.training.distributed import World
from UHarmonyLib.training.loop import Trainer
from UHarmonyLib.training.sampling import Batch

TINY: dict[str, Any] = {"patch": (32,), "filters": (4, 8, 16), "precision": "float32"}
TINY_ARGS = ["--patch", "32", "--filters", "4", "8", "16", "--precision", "float32"]
EASY_SPEC = {
    "name": "easy",
    "sites": [{"name": "solo", "channels": ["FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}}],
}
# A distributed step differs from the single-process one by float rounding only: the gradients agree to 4e-7
# (relative L2, measured at step 1). Adam, close to sign descent in its first steps, grows rounding differences
# step by step: measured, the updates of a 2-process run differ from the single-process ones by 1e-5 of the
# update (L2) after 6 steps, 1e-4 after 8, 2e-3 after 10 and 1.4e-2 after 12, where a single-process run on 2
# threads instead of 1 (rounding alone) differs by 2.0e-2. So the runs here are at most 8 steps long, and the
# logged losses agree to all 5 decimals over them.
UPDATE_GAP = 1e-3
LOSS_GAP = 1e-4


def _synth(spec: Path | str, out: Path, cases: int) -> Path:
    run = run_main("synth", "--scenario", spec, "--out", out, "--spacing", 4, "--cases-per-site", cases)
    assert run.code == 0, run
    return out


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FLAIR site, 4 cases (one held out)."""
    folder = tmp_path_factory.mktemp("easy")
    (folder / "spec.json").write_text(json.dumps(EASY_SPEC), encoding="utf-8")
    return _synth(folder / "spec.json", folder / "data", 4)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sites with different channel sets (absent channels), one annotating only the whole lesion."""
    return _synth("mixed", tmp_path_factory.mktemp("mixed") / "data", 2)


def _trainer(data: Path, out: Path, world: World | None = None, **settings: Any) -> Trainer:
    config = TrainConfig(data=[data], out=out, steps=6, batch_size=4, **{**TINY, **settings})
    return Trainer(config, SilentReporter(), world or World(), torch.device("cpu"))


def _same(a: Batch, b: Batch) -> bool:
    return (
        torch.equal(a.image, b.image)
        and torch.equal(a.target, b.target)
        and torch.equal(a.sites, b.sites)
        and a.groups == b.groups
    )


def _card(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "model.json").read_text(encoding="utf-8"))


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "model.safetensors"))


def _update_gap(bundle: Path, reference: Path, start: Path) -> float:
    """||w - w_ref|| / ||w_ref - w_start|| over every weight: how far a run's update is from the reference's."""
    w, ref, w0 = _weights(bundle), _weights(reference), _weights(start)
    gap = sum(float((w[k].double() - ref[k].double()).square().sum()) for k in ref)
    update = sum(float((ref[k].double() - w0[k].double()).square().sum()) for k in ref)
    return (gap / update) ** 0.5


def _loss_gap(bundle: Path, reference: Path) -> float:
    a, b = _card(bundle)["provenance"]["loss_curve"], _card(reference)["provenance"]["loss_curve"]
    assert [s for s, _ in a] == [s for s, _ in b]
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b))


# ---------------------------------------------------------------- streaming and workers


def test_streamed_cases_and_workers_make_the_in_memory_batches(mixed: Path, tmp_path: Path) -> None:
    """Stream mode (2 cases cached) with 0 or 2 workers yields the in-memory batches, tensor for tensor."""
    tilt = {"site_weights": {"hospital-c": 3.0}}
    memory = _trainer(mixed, tmp_path / "m", **tilt)
    stream = _trainer(mixed, tmp_path / "s", data_mode="stream", cache_cases=2, **tilt)
    assert stream.preprocessing == memory.preprocessing
    steps = range(1, 7)
    expected = [memory.sampler.batch(s) for s in steps]
    assert len({i for b in expected for i in b.sites.tolist()}) > 1  # several sites, absent channels among them
    for workers in (0, 2):
        got = list(training_batches(stream.sampler, steps, slice(None), workers, seed=0))
        assert len(got) == len(expected) and all(_same(a, b) for a, b in zip(got, expected)), workers
    # the cache holds the two cases drawn most often: hospital-c's, whose site weight is 3
    cached = stream.sampler.cases.make.dataset  # MONAI's CacheDataset, the cases most drawn first
    assert len(cached._cache) == 2 and cached.cache_num == 2
    assert {stream.plan.sites[stream.plan.cases[i].site].name for i in cached.data[:2]} == {"hospital-c"}


def test_ranks_cut_disjoint_shares_of_the_single_process_batch(mixed: Path, tmp_path: Path) -> None:
    """Each of 2 ranks makes half of every global batch; together, in rank order, the single-process batch."""
    alone = _trainer(mixed, tmp_path / "a", data_mode="stream", cache_cases=0)
    for step in (1, 2, 3):
        whole = alone.sampler.batch(step)
        parts = [alone.sampler.batch(step, World(rank, 2).share(4)) for rank in (0, 1)]
        assert [len(p.groups) for p in parts] == [2, 2]
        joined = Batch(
            torch.cat([p.image for p in parts]),
            torch.cat([p.target for p in parts]),
            torch.cat([p.sites for p in parts]),
            [g for p in parts for g in p.groups],
        )
        assert _same(joined, whole)


def test_stream_mode_trains_the_in_memory_bundle(easy: Path, tmp_path: Path) -> None:
    """Streamed (1 case cached, 2 workers): the same weights, loss curve, validation and gate bank, bit for bit."""
    settings = {"steps": 6, "val_every": 3, "log_every": 1, **TINY}
    memory = train(TrainConfig(data=[easy], out=tmp_path / "memory", **settings))
    stream = train(
        TrainConfig(data=[easy], out=tmp_path / "stream", data_mode="stream", workers=2, cache_cases=1, **settings)
    )
    a, b = _weights(memory), _weights(stream)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _card(stream)["metrics"] == _card(memory)["metrics"]  # validation and the gate's familiar distance
    assert _card(stream)["metrics"]["validation_cases"] == 1
    assert _card(stream)["provenance"]["loss_curve"] == _card(memory)["provenance"]["loss_curve"]
    assert "--workers" not in _card(stream)["provenance"]["command"]  # how batches are made is not the training


@pytest.mark.bad_input("train --data-mode stream", words="words")
@pytest.mark.parametrize(
    ("defect", "words"),
    [
        pytest.param("missing image", "not found", id="a case's image file is missing"),
        pytest.param("truncated image", "truncated", id="a case's image file is truncated"),
        pytest.param("label value", "label value 6 is not one of the case's labels", id="an unknown label value"),
    ],
)
def test_stream_mode_refuses_a_bad_case_before_training_as_memory_mode_does(
    easy: Path, tmp_path: Path, defect: str, words: str
) -> None:
    """Refused in one line (exit 2) before any step, with the in-memory path's message; nothing is written."""
    data = tmp_path / "data"
    data.mkdir()
    for item in easy.iterdir():
        (data / item.name).symlink_to(item)
    raw = json.loads((easy / "dataset.json").read_text(encoding="utf-8"))
    case = raw["training"][2]
    if defect == "label value":
        label = sitk.ReadImage(str(easy / case["label"]))
        sitk.WriteImage(label + 5 * (label > 0), str(tmp_path / "bad_label.nii.gz"))
        case["label"] = str(tmp_path / "bad_label.nii.gz")
    elif defect == "missing image":
        case["image"] = ["imagesTr/none_0000.nii.gz"]
    else:
        whole = (easy / case["image"][0]).read_bytes()
        (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
        case["image"] = [str(tmp_path / "cut.nii.gz")]
    (data / "dataset.json").unlink()
    (data / "dataset.json").write_text(json.dumps(raw), encoding="utf-8")
    lines = []
    for mode in ("memory", "stream"):
        out = tmp_path / f"out-{mode}"
        run = run_main("train", "--data", data, "--out", out, "--steps", 2, "--data-mode", mode, "--workers", 1)
        lines.append(assert_one_line_error(run))
        assert run.code == 2 and words in lines[-1], lines
        assert not out.exists() and not out.with_name(out.name + ".work").exists()
    assert lines[0] == lines[1]


def test_bad_stream_options_are_refused_in_one_line(easy: Path, tmp_path: Path) -> None:
    for extra, words in ((["--workers", "-1"], "--workers and --cache-cases must be >= 0"),
                         (["--cache-cases", "-3"], "--workers and --cache-cases must be >= 0")):  # fmt: skip
        run = run_main("train", "--data", easy, "--out", tmp_path / "m", *extra)
        assert run.code == 2 and words in assert_one_line_error(run)


# ---------------------------------------------------------------- torchrun


def _torchrun(*args: Any) -> subprocess.Popen[str]:
    """`torchrun --standalone --nproc-per-node 2 -m UHarmonyLib train ARGS --progress json` (gloo on the CPU)."""
    env = {k: v for k, v in os.environ.items() if k != "UHARMONY_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "UHarmonyLib", "train", *map(str, args), "--progress", "json"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def start(mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights the distributed tests' runs start from (a run whose steps change nothing: lr 1e-30)."""
    out = tmp_path_factory.mktemp("start") / "start"
    return train(TrainConfig(data=[mixed], out=out, steps=1, lr=1e-30, val_fraction=0.0, **TINY))


# the default U-Harmony layers on four sites: each rank's share of a mixed batch trains its own sites' rows
DISTRIBUTED = {"batch_size": 4, "val_fraction": 0.0, "log_every": 1, **TINY}
DISTRIBUTED_ARGS = ["--batch", 4, "--val-fraction", 0, "--log-every", 1, *TINY_ARGS]


@pytest.mark.slow  # two torchrun process groups and three single-process runs
def test_two_processes_train_the_single_process_steps_and_resume_in_one(
    mixed: Path, start: Path, tmp_path: Path
) -> None:
    """2 gloo processes (streamed, 1 worker each): the single-process losses and weights within rounding, one
    result; stopped by SIGTERM, both stop at one step, rank 0 writes one checkpoint, one process continues it."""
    both = tmp_path / "both"
    proc = _torchrun("--data", mixed, "--out", both, "--steps", 6, "--data-mode", "stream", "--workers", 1,
                     *DISTRIBUTED_ARGS)  # fmt: skip
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    events = _events(stdout)
    assert [e["event"] for e in events].count("result") == 1  # rank 0 alone reports
    logs = "\n".join(e["message"] for e in events if e["event"] == "log")
    assert "6 steps of batch 4" in logs and "2 processes" in logs
    alone = train(TrainConfig(data=[mixed], out=tmp_path / "alone", steps=6, **DISTRIBUTED))
    assert _loss_gap(both, alone) < LOSS_GAP
    assert _update_gap(both, alone, start) < UPDATE_GAP
    assert _card(both)["provenance"]["steps"] == 6 and not both.with_name("both.work").exists()

    # SIGTERM reaches both ranks through torchrun: they agree on the step, rank 0 checkpoints it
    out, work = tmp_path / "stopped", tmp_path / "stopped.work"
    proc = _torchrun("--data", mixed, "--out", out, "--steps", 8, "--checkpoint-every", 100, *DISTRIBUTED_ARGS)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["done"] >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (saved,) = checkpoints(work)
    assert not [p for p in work.iterdir() if p.name.startswith(".tmp-")]
    step = int(saved.name.split("-")[1])
    meta = json.loads((saved / "state.json").read_text(encoding="utf-8"))
    assert meta["world_size"] == 2 and 2 <= step < 8
    assert stderr.count(f"interrupted at step {step} of 8; saved a checkpoint in {work}") == 2  # both ranks
    assert not out.exists()

    resumed = run_main("train", "--data", mixed, "--out", out, "--resume", "--progress", "json")
    assert resumed.code == 0, resumed.stderr
    logs = "\n".join(e["message"] for e in _events(resumed.stdout) if e["event"] == "log")
    assert f"resumed from step {step} of 8" in logs and "it ran in 2 processes, now 1" in logs
    whole = train(TrainConfig(data=[mixed], out=tmp_path / "whole", steps=8, checkpoint_every=100, **DISTRIBUTED))
    assert _loss_gap(out, whole) < LOSS_GAP
    # 8 steps through two world sizes: measured 1.4e-3, spread over the conv weights in proportion to their updates
    # (rounding carried by AdamW); a site row trained by the wrong samples would stand out by orders of magnitude
    assert _update_gap(out, whole, start) < 2 * UPDATE_GAP
    assert _card(out)["provenance"]["resumed_from"] == [step]


def test_a_batch_that_does_not_split_over_the_processes_is_refused(mixed: Path, tmp_path: Path) -> None:
    proc = _torchrun("--data", mixed, "--out", tmp_path / "m", "--batch", 3, *TINY_ARGS)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    line = "uharmony: error: --batch 3 does not split over 2 processes: use a multiple of it"
    # every rank refuses, but torchrun stops the other rank as soon as one exits: one or two such lines, nothing else
    errors = [x for x in stderr.splitlines() if x.startswith("uharmony:")]
    assert errors and set(errors) == {line} and not (tmp_path / "m.work").exists()
