"""`uharmony train`: the loss falls, bundles segment, SIGKILL + --resume is exact, marginal loss, missing channels.

Real synthetic datasets at 4 mm, tiny DynUNets (filters 4, 8, 16; patch 32), a handful of
steps, one thread; training runs in-process except the one that is killed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch._inductor.config as inductor_config
from conftest import REPO, assert_one_line_error, run_main, tiny_net
from monai.losses import DiceCELoss
from safetensors.torch import load_file

from UHarmonyLib.cli import build_parser
from UHarmonyLib.commands.train import config_from_args
from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.model.weights import load_bundle, unique_state
from UHarmonyLib.nn.gate_network import FEATURES_PER_CHANNEL, scanner_signature
from UHarmonyLib.nn.harmony_layer import HarmonyNorm
from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.training import MarginalDiceCELoss, TrainConfig, marginal_probabilities, train
from UHarmonyLib.training.checkpoint import checkpoints, load_checkpoint
from UHarmonyLib.training.compiling import CompiledStep
from UHarmonyLib.training.distributed import World
from UHarmonyLib.training.loop import Trainer
from UHarmonyLib.training.patches import prepare_case
from UHarmonyLib.training.sampling import PatchSampler

TINY = {"patch": (32,), "filters": (4, 8, 16)}
TINY_ARGS = ["--patch", "32", "--filters", "4", "8", "16"]
EASY_SPEC = {
    "name": "easy",
    "sites": [{"name": "solo", "channels": ["FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}}],
}
PREP = {"orientation": "RAS", "spacing": [4.0, 4.0, 4.0], "intensity": {"method": "zscore", "nonzero": True}}


def _synth(spec: Path | str, out: Path, cases: int) -> Path:
    run = run_main("synth", "--scenario", spec, "--out", out, "--spacing", 4, "--cases-per-site", cases)
    assert run.code == 0, run
    return out


@pytest.fixture(scope="session")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FLAIR site, two large lesions per case, 4 cases (one held out)."""
    folder = tmp_path_factory.mktemp("easy")
    spec = folder / "easy.json"
    spec.write_text(json.dumps(EASY_SPEC), encoding="utf-8")
    return _synth(spec, folder / "data", 4)


@pytest.fixture(scope="session")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sites with different channel sets; one annotates only the whole lesion."""
    return _synth("mixed", tmp_path_factory.mktemp("mixed") / "data", 2)


@pytest.fixture(scope="module")
def trained(easy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "easy-model-v2"
    return train(TrainConfig(data=[easy], out=out, steps=40, val_every=20, log_every=1, **TINY))


def _card(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "model.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- training works


def test_loss_goes_down_and_card_records_the_run(trained: Path, easy: Path) -> None:
    card = _card(trained)
    curve = card["provenance"]["loss_curve"]
    assert [s for s, _ in curve] == list(range(1, 41))
    losses = [v for _, v in curve]
    first, last = float(np.mean(losses[:8])), float(np.mean(losses[-8:]))
    assert last < 0.85 * first, (first, last, losses)
    assert max(losses[-8:]) < min(losses[:8]), losses  # no overlap between the start and the end: not noise
    assert (card["name"], card["version"]) == ("easy-model", 2)
    assert card["channels"] == [{"name": "FLAIR", "modality": "MR"}]
    assert [(lab["value"], lab["name"]) for lab in card["labels"]] == [(1, "lesion core"), (2, "edema")]
    # SNOMED CT codes in Slicer's terminology format: Neoplasm and Edema, both Morphologically Altered Structure
    codes = [lab["terminology"].split("~")[1:3] for lab in card["labels"]]
    assert codes == [["SCT^49755003^Morphologically Altered Structure", "SCT^108369006^Neoplasm"],
                     ["SCT^49755003^Morphologically Altered Structure", "SCT^79654002^Edema"]]  # fmt: skip
    assert card["preprocessing"] == PREP
    assert card["inference"]["patch_size"] == [32, 32, 32] and card["inference"]["overlap"] == 0.5
    (site,) = card["sites"]
    assert site["name"] == "solo" and site["cases"] == 4 and site["validation_cases"] == 1
    assert site["labels"] == ["lesion core", "edema"] and site["channels"] == ["FLAIR"]
    prov = card["provenance"]
    assert prov["seed"] == 0 and prov["steps"] == 40 and prov["seconds_per_step"] > 0
    assert "path" not in prov["data"][0] and prov["data"][0]["sha256"] == sha256_file(easy / "dataset.json")
    assert str(easy) not in json.dumps(card)  # the card names its datasets, never where they were
    assert "--steps 40" in prov["command"] and "--filters 4 8 16" in prov["command"]
    metrics = card["metrics"]
    assert metrics["selected_step"] in (20, 40) and metrics["validation_cases"] == 1
    solo = metrics["sites"]["solo"]
    assert set(solo["dice"]) == {"lesion core", "edema", "whole lesion"} == set(solo["hd95_mm"])
    assert solo["gate_accuracy"] == 1.0
    assert metrics["mean_dice_whole_lesion"] == solo["dice"]["whole lesion"]
    assert not trained.with_name(trained.name + ".work").exists()  # finished runs leave no checkpoints


def test_trained_bundle_segments_through_the_cli(trained: Path, easy: Path, tmp_path: Path) -> None:
    image = easy / "imagesTr" / "solo_000_0000.nii.gz"
    out = tmp_path / "seg.nii.gz"
    run = run_main("segment", "--model", trained, image, "--out", out, "--progress", "json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["gate"]["chosen"] == "solo"
    seg, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert seg.GetSize() == ref.GetSize() and seg.GetDirection() == ref.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) <= {0, 1, 2}
    load_bundle(trained)  # checksums and architecture verified


# ---------------------------------------------------------------- resume


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.slow  # kill and resume: two real training processes
def test_resume_after_sigkill_continues_exactly(easy: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    work = tmp_path / "killed.work"
    args = ["--data", easy, "--out", out, "--steps", 16, "--val-every", 8, "--checkpoint-every", 4, *TINY_ARGS]
    cmd = [sys.executable, "-m", "UHarmonyLib", "train", *map(str, args), "--progress", "json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UHARMONY_DEBUG", None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoints(work):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # every checkpoint under its final name is complete (checksums verified), whatever the kill interrupted
    done = checkpoints(work)
    assert done
    for folder in done:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        assert meta["step"] == int(folder.name.split("-")[1])
        for name, digest in meta["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    ckpt = load_checkpoint(work)
    assert ckpt is not None and ckpt.step % 4 == 0 and ckpt.step < 16
    assert not out.exists()
    # a checkpoint that was being written when a run died: never read, removed on resume
    stale = work / ".tmp-crashed"
    stale.mkdir()
    (stale / "state.safetensors").write_bytes(b"\x00" * 100)
    assert load_checkpoint(work).path == ckpt.path  # type: ignore[union-attr]
    # without --resume the unfinished run is not thrown away
    refused = run_main("train", *args)
    assert refused.code == 2 and "--resume" in assert_one_line_error(refused)

    resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    events = _events(resumed.stdout)
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert f"resumed from step {ckpt.step} of 16" in "\n".join(logs)
    steps = [e["done"] for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert steps == list(range(ckpt.step + 1, 17))
    result = events[-1]
    assert result["event"] == "result" and result["steps"] == 16 and result["resumed_from"] == [ckpt.step]
    assert not work.exists()

    # bit-identical to the same run never interrupted
    whole = train(TrainConfig(data=[easy], out=tmp_path / "whole", steps=16, val_every=8, checkpoint_every=4, **TINY))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _card(out)["metrics"] == _card(whole)["metrics"]
    assert _card(out)["provenance"]["loss_curve"] == _card(whole)["provenance"]["loss_curve"]


# ---------------------------------------------------------------- marginal loss


def test_marginal_loss_matches_the_hand_computed_value() -> None:
    # two voxels; union classes background, core, edema; the site labels "whole lesion" = core + edema
    probs = torch.tensor([[[0.2, 0.6], [0.5, 0.1], [0.3, 0.3]]])  # (B=1, K=3, N=2)
    target = torch.tensor([[[1, 0]]])  # voxel 0 lesion, voxel 1 background
    groups = [[0], [1, 2]]
    marginal = marginal_probabilities(probs, groups)
    assert torch.allclose(marginal, torch.tensor([[[0.2, 0.6], [0.8, 0.4]]]))
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    dice_bg = 1 - 2 * 0.6 / (0.8 + 1)  # intersection 0.6; predicted 0.2 + 0.6; truth 1 voxel
    dice_lesion = 1 - 2 * 0.8 / (1.2 + 1)
    expected = ce + (dice_bg + dice_lesion) / 2
    got = MarginalDiceCELoss().from_probabilities(probs, target, groups)
    assert got.item() == pytest.approx(expected, abs=1e-4)
    # the same through logits, and a model that already splits the lesion its own way costs the same
    assert MarginalDiceCELoss()(probs.log(), target, groups).item() == pytest.approx(expected, abs=1e-4)
    swapped = probs[:, [0, 2, 1]]
    assert MarginalDiceCELoss()(swapped.log(), target, groups).item() == pytest.approx(expected, abs=1e-4)


def test_full_labels_give_monai_dice_ce_and_unannotated_classes_are_not_background() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 5, 4)
    target = torch.randint(0, 3, (1, 1, 6, 5, 4))
    ours = MarginalDiceCELoss()(logits, target, [[0], [1], [2]])
    monai = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    assert ours.item() == pytest.approx(monai.item(), abs=1e-5)
    # a site that never annotates edema: predicting edema where it says "background" costs nothing extra
    core_only = [[0, 2], [1]]
    label = torch.tensor([[[0, 1]]])
    as_background = torch.tensor([[[0.9, 0.05], [0.05, 0.9], [0.05, 0.05]]]).log()
    as_edema = torch.tensor([[[0.05, 0.05], [0.05, 0.9], [0.9, 0.05]]]).log()
    loss = MarginalDiceCELoss()
    assert loss(as_edema, label, core_only).item() == pytest.approx(loss(as_background, label, core_only).item())


# ---------------------------------------------------------------- channels and datasets


def _plain_msd(mixed: Path, folder: Path) -> Path:
    """A plain MSD dataset (no sites, one 4-D image per case) from the mixed dataset's full-channel site."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for k in range(2):
        images = [sitk.ReadImage(str(mixed / "imagesTr" / f"hospital-a_{k:03d}_{c:04d}.nii.gz")) for c in range(3)]
        sitk.WriteImage(sitk.JoinSeries(images), str(folder / "imagesTr" / f"brain_{k}.nii.gz"))
        label = sitk.ReadImage(str(mixed / "labelsTr" / f"hospital-a_{k:03d}.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"brain_{k}.nii.gz"))
        training.append({"image": f"./imagesTr/brain_{k}.nii.gz", "label": f"./labelsTr/brain_{k}.nii.gz"})
    data = {
        "name": "plainmsd",
        "modality": {"0": "T1", "1": "T2", "2": "FLAIR"},
        "labels": {"0": "background", "1": "lesion core", "2": "edema"},
        "numTraining": 2,
        "training": training,
    }
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_missing_channels_train_as_zero_channels(mixed: Path, tmp_path: Path) -> None:
    plain = _plain_msd(mixed, tmp_path / "plain")
    plan = plan_training([mixed, plain], val_fraction=0.2, seed=0)
    assert plan.channels == ["T1", "T2", "FLAIR"]
    assert [s.name for s in plan.sites] == ["hospital-a", "hospital-b", "hospital-c", "hospital-d", "plainmsd"]
    whole = next(c for c in plan.cases if c.entry.site == "hospital-c")
    assert whole.label_names == ["whole lesion"] and whole.groups == [[0], [1, 2]]
    # a 4-D case reads back as its three channel files
    four_d = next(c for c in plan.cases if c.four_d)
    loaded = load_case(four_d, 3)
    source = sitk.ReadImage(str(mixed / "imagesTr" / "hospital-a_000_0001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(loaded.images[1]), sitk.GetArrayFromImage(source))
    # a T1-only case: T2 and FLAIR are exact zeros in model space, and so is their part of the gate's signature
    t1_only = next(c for c in plan.cases if c.entry.site == "hospital-d")
    prepared = prepare_case(load_case(t1_only, 3), PREP, (32, 32, 32))
    assert prepared.present == [0] and prepared.image[1:].abs().max() == 0 and prepared.image[0].abs().max() > 0
    sampler = PatchSampler([prepared], [t1_only.groups], [0], 1, (32, 32, 32), 4, seed=0, channel_dropout=0.9)
    patches = sampler.batch(1).image
    assert patches[:, 1:].abs().max() == 0
    assert scanner_signature(patches)[:, FEATURES_PER_CHANNEL:].abs().max() == 0
    # channel dropout zeroes present channels but never all of them
    full = next(c for c in plan.cases if c.entry.site == "hospital-a")
    prepared_full = prepare_case(load_case(full, 3), PREP, (32, 32, 32))
    sampler = PatchSampler([prepared_full], [full.groups], [0], 1, (32, 32, 32), 8, seed=0, channel_dropout=0.9)
    kept = (sampler.batch(3).image.flatten(2).abs().amax(2) > 0).sum(1)
    assert kept.min() >= 1 and kept.max() < 3

    bundle = train(TrainConfig(data=[mixed, plain], out=tmp_path / "mixed-model", steps=4, val_every=0, **TINY))
    card = _card(bundle)
    assert [c["name"] for c in card["channels"]] == ["T1", "T2", "FLAIR"]
    sites = {s["name"]: s for s in card["sites"]}
    assert sites["hospital-d"]["channels"] == ["T1"] and sites["hospital-b"]["channels"] == ["T1", "T2"]
    assert sites["hospital-c"]["labels"] == ["whole lesion"] and sites["plainmsd"]["cases"] == 2
    assert card["architecture"]["in_channels"] == 3 and card["architecture"]["num_sites"] == 5


def _dataset(folder: Path, easy: Path, **changes: Any) -> Path:
    """A copy of the easy dataset.json (absolute paths) with some keys changed."""
    data = json.loads((easy / "dataset.json").read_text(encoding="utf-8"))
    for item in data["training"]:
        item["image"] = [str(easy / p) for p in item["image"]]
        item["label"] = str(easy / item["label"])
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_bad_datasets_are_refused_with_one_line(easy: Path, tmp_path: Path) -> None:
    raw = json.loads((easy / "dataset.json").read_text(encoding="utf-8"))["training"][0]
    first = {**raw, "image": [str(easy / p) for p in raw["image"]], "label": str(easy / raw["label"])}
    bad_label = tmp_path / "bad_label.nii.gz"
    label = sitk.ReadImage(first["label"])
    sitk.WriteImage(label + 5 * (label > 0), str(bad_label))
    cases = {
        "nowhere": (tmp_path / "nowhere", "dataset file not found"),
        "no cases": (_dataset(tmp_path / "empty", easy, training=[]), "no training cases"),
        "missing file": (
            _dataset(tmp_path / "gone", easy, training=[{**first, "image": ["imagesTr/none_0000.nii.gz"]}]),
            "not found",
        ),
        "unknown channel": (
            _dataset(
                tmp_path / "chan",
                easy,
                training=[{**first, "channels": ["PD"]}],
            ),
            "not in the dataset's channel_names",
        ),
        "unknown label": (
            _dataset(
                tmp_path / "lab",
                easy,
                training=[{**first, "labels": ["tumour"]}],
            ),
            "neither in the dataset labels nor in its merges",
        ),
        "label value": (
            _dataset(
                tmp_path / "val",
                easy,
                training=[{**first, "label": str(bad_label)}],
            ),
            "label value 6 is not one of the case's labels",
        ),
    }
    for name, (dataset, words) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        run = run_main("train", "--data", dataset, "--out", out, "--steps", 2, *TINY_ARGS)
        line = assert_one_line_error(run)
        assert run.code == 2 and words in line, (name, line)
        assert not out.exists() and not out.with_name(out.name + ".work").exists()
    patch = run_main("train", "--data", easy, "--out", tmp_path / "p", "--patch", 18, "--filters", 4, 8, 16)
    assert patch.code == 2 and "multiple of 4" in assert_one_line_error(patch)
    exists = run_main("train", "--data", easy, "--out", easy, *TINY_ARGS)
    assert exists.code == 2 and "already exists" in assert_one_line_error(exists)


def test_site_weights_tilt_the_draw_and_bad_weights_are_refused(mixed: Path, easy: Path, tmp_path: Path) -> None:
    plan = plan_training([mixed], val_fraction=0.0, seed=0)
    prepared = [prepare_case(load_case(c, 3), PREP, (32, 32, 32)) for c in plan.cases]
    args = (prepared, [c.groups for c in plan.cases], [c.site for c in plan.cases], 4, (32, 32, 32), 2)
    plain = PatchSampler(*args, seed=0)
    weighted = PatchSampler(*args, seed=0, site_weights=[1.0, 4.0, 1.0, 1.0])
    same = PatchSampler(*args, seed=0, site_weights=[2.0, 2.0, 2.0, 2.0])
    steps = range(1, 61)

    def drawn(sampler: PatchSampler) -> np.ndarray:
        return np.bincount(np.concatenate([sampler.batch(s).sites.numpy() for s in steps]), minlength=4)

    counts = drawn(weighted)
    assert counts[1] > 1.5 * max(counts[0], counts[2], counts[3])  # hospital-b drawn far more often
    assert drawn(plain).max() - drawn(plain).min() < 25
    assert torch.equal(plain.batch(7).image, same.batch(7).image)  # equal weights: the unweighted draws exactly

    for value, words in (("hospital-b=0", "must be a positive number"), ("hospital-b", "expected SITE=WEIGHT"),
                         ("nowhere=2", "no such site in the data")):  # fmt: skip
        run = run_main(
            "train", "--data", mixed, "--out", tmp_path / "w", "--steps", 1, "--site-weight", value, *TINY_ARGS
        )
        assert run.code == 2 and words in assert_one_line_error(run), (value, run)
    bundle = train(
        TrainConfig(
            data=[easy], out=tmp_path / "weighted", steps=1, site_weights={"solo": 3.0}, val_fraction=0.0, **TINY
        )
    )
    assert "--site-weight solo=3" in _card(bundle)["provenance"]["command"]


def test_restore_degree_reaches_the_network_and_bad_degrees_are_refused(easy: Path, tmp_path: Path) -> None:
    """--restore-degree sets the cubic (or other) site polynomial below full resolution; the card records it."""
    for value in ("0", "6"):
        run = run_main("train", "--data", easy, "--out", tmp_path / "d", "--steps", 1, "--restore-degree", value)
        assert run.code == 2 and "--restore-degree" in assert_one_line_error(run), (value, run)
    bundle = train(
        TrainConfig(data=[easy], out=tmp_path / "linear", steps=1, restore_degree=1, val_fraction=0.0, **TINY)
    )
    card = _card(bundle)
    assert card["architecture"]["degree"] == 1 and "--restore-degree 1" in card["provenance"]["command"]
    net = load_bundle(bundle).net
    assert {m.degree for m in net.modules() if isinstance(m, HarmonyNorm)} == {1}
    cubic = load_bundle(train(TrainConfig(data=[easy], out=tmp_path / "cubic", steps=1, val_fraction=0.0, **TINY))).net
    assert {m.degree for m in cubic.modules() if isinstance(m, HarmonyNorm)} == {1, 3}


def test_site_params_train_shared_rows_and_bundles_store_plain_ones(mixed: Path, tmp_path: Path) -> None:
    """Residual site rows (the default) train as shared + offset but the bundle holds plain per-site rows."""
    run = run_main("train", "--data", mixed, "--out", tmp_path / "x", "--steps", 1, "--site-params", "pooled")
    assert run.code == 2 and "--site-params pooled" in assert_one_line_error(run), run
    bundles = {
        kind: train(TrainConfig(data=[mixed], out=tmp_path / kind, steps=3, site_params=kind, val_fraction=0.0, **TINY))
        for kind in ("residual", "independent")
    }
    states = {kind: load_file(str(b / "model.safetensors")) for kind, b in bundles.items()}
    assert set(states["residual"]) == set(states["independent"])
    assert not any("parametrizations" in k for k in states["residual"])
    assert "--site-params" not in _card(bundles["residual"])["provenance"]["command"]
    assert "--site-params independent" in _card(bundles["independent"])["provenance"]["command"]
    assert states["residual"]["backbone.output_block.conv.conv.weight"].shape[0] == 4  # one head row per site
    assert load_bundle(bundles["residual"]).config.num_sites == 4


# ---------------------------------------------------------------- --compile


INDUCTOR_IMPORTS = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside PyTorch


@INDUCTOR_IMPORTS
def test_compile_is_a_runtime_choice_and_saves_the_plain_networks_weights(
    easy: Path, trained: Path, tmp_path: Path
) -> None:
    """`--compile` reaches the trainer as a runtime choice (not in the card's command, free to differ on --resume,
    which compiles only when asked again). The steps call torch.compile's wrapper, whose state dict keys carry
    `_orig_mod.`; checkpoints and the bundle come from the network itself: an uncompiled run's keys, loadable
    without compiling. Nothing is compiled here (that happens at the first call: minutes on 2 CPU cores)."""
    args = ["train", "--data", str(easy), "--out", str(tmp_path / "compiled-v1"), "--steps", "2", "--compile"]
    config = config_from_args(build_parser().parse_args([*args, *TINY_ARGS]))
    plain = replace(config, compile=False)
    assert config.compile and "compile" not in config.training_fields() and "--compile" not in config.command_line(2)
    assert plain.resumed({**config.training_fields(), **config.runtime_fields()}, set(), tmp_path).compile is False
    assert config.resumed({**plain.training_fields(), **plain.runtime_fields()}, {"compile"}, tmp_path).compile
    trainer = Trainer(config, SilentReporter(), World.from_env(), torch.device("cpu"))
    trainer.start()
    assert isinstance(trainer.model, CompiledStep) and trainer.model.compiled._orig_mod is trainer.net
    assert set(trainer.model.compiled.state_dict()) == {f"_orig_mod.{k}" for k in trainer.net.state_dict()}
    trainer.checkpoint(1)
    assert set(load_checkpoint(config.work_dir).model) == set(unique_state(trainer.net))
    bundle = Path(trainer.finish(time.perf_counter())["bundle"])
    keys = set(load_file(str(bundle / "model.safetensors")))
    assert keys == set(load_file(str(trained / "model.safetensors"))) and not any("_orig_mod" in k for k in keys)
    assert load_bundle(bundle).net.config.filters == (4, 8, 16)


@INDUCTOR_IMPORTS
def test_a_compiler_that_fails_stops_the_step_with_one_line(tmp_path: Path) -> None:
    """Where torch.compile's backend cannot compile (here: inductor finds no C++ compiler), the first step says so
    in one line."""
    step = CompiledStep(tiny_net().train())
    x, weights = torch.randn(2, 1, 16, 16, 16), torch.eye(3)[:2]
    missing = {"cpp.cxx": (None, str(tmp_path / "no-compiler")), "fx_graph_cache": False}
    try:
        with inductor_config.patch(missing), pytest.raises(InputError) as refused:
            step(x, weights)
    finally:
        torch._dynamo.reset()
    message = str(refused.value)
    assert message.startswith("--compile: torch.compile failed here (") and "\n" not in message
    assert "no-compiler" in message and message.endswith("; leave out --compile")
