"""One description per option: parsers, TrainConfig, the card's recorded command and Slicer's arguments agree."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from slicer_helpers import REPO
from UHarmonySlicerLib.addsite import add_site_arguments
from UHarmonySlicerLib.models import read_model
from UHarmonySlicerLib.segment import segment_arguments

from UHarmonyLib.cli import COMMANDS, build_parser
from UHarmonyLib.commands import train
from UHarmonyLib.commands.train import config_from_args
from UHarmonyLib.errors import InputError
from UHarmonyLib.options import Option, field_options, shareable_path, to_argv
from UHarmonyLib.resources import DEFAULT_MODEL_NAME
from UHarmonyLib.training import TrainConfig

HEAVY = ("torch", "monai", "safetensors", "scipy", "psutil")
TRAIN_OPTIONS = field_options(TrainConfig)


def _train_parser() -> argparse.ArgumentParser:
    verbs = argparse.ArgumentParser().add_subparsers()
    train.add_parser(verbs)
    return verbs.choices["train"]


def _parse_train(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def _full_config(tmp_path: Path) -> TrainConfig:
    """Every command-line field away from its default."""
    return TrainConfig(
        data=[tmp_path / "a", tmp_path / "b b"],
        out=tmp_path / "model-v2",
        backbone="swinunetr",
        norm="instance",
        steps=7,
        patch=(32, 48, 64),
        batch_size=3,
        lr=1e-3,
        seed=5,
        device="cpu",
        precision="float32",
        spacing=(1.5, 1.5, 2.25),
        filters=(8, 16, 32),
        feature_size=24,
        restore_degree=2,
        site_params="independent",
        val_every=3,
        val_fraction=0.25,
        checkpoint_every=4,
        log_every=2,
        channel_dropout=0.3,
        site_weights={"hospital-a": 2.0, "hospital-b": 0.5},
        resume=True,
        harmonize="zscore",
        data_mode="stream",
        workers=2,
        cache_cases=3,
        compile=True,
    )


def _values(config: TrainConfig) -> dict[str, object]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


def test_the_train_parser_is_trainconfigs_command_line_fields() -> None:
    """Every train option but --progress is a TrainConfig field, in field order, and parses into that field."""
    actions = [a for a in _train_parser()._actions if a.option_strings and a.dest != "help"]
    assert [a.option_strings[0] for a in actions] == [o.flag for o in TRAIN_OPTIONS] + ["--progress"]
    assert [a.dest for a in actions[:-1]] == [o.dest for o in TRAIN_OPTIONS]
    library_only = {f.name for f in fields(TrainConfig)} - {o.dest for o in TRAIN_OPTIONS}
    assert library_only == {"weight_decay", "gate_weight", "scaler_patches", "command"}


def test_config_to_argv_and_back_is_the_same_config(tmp_path: Path) -> None:
    for config in (_full_config(tmp_path), TrainConfig(data=[tmp_path / "d"], out=tmp_path / "m")):
        argv = to_argv(TRAIN_OPTIONS, _values(config))
        assert _parse_train(argv) == config, argv
    minimal = TrainConfig(data=[Path("d")], out=Path("m"))
    assert to_argv(TRAIN_OPTIONS, _values(minimal)) == ["--data", "d", "--out", "m"]


def test_the_recorded_command_reruns_the_same_training(tmp_path: Path) -> None:
    """The card's `uharmony train` line: runnable where the datasets are (paths by name only, since cards travel),
    the same training fields, no runtime choices."""
    config = replace(_full_config(tmp_path), steps=None)
    words = shlex.split(config.command_line(steps=1000))
    assert words[:2] == ["uharmony", "train"] and "--resume" not in words and "--device" not in words
    assert not {"--data-mode", "--workers", "--cache-cases", "--compile"} & set(words)  # how steps run: not recorded
    assert str(tmp_path) not in shlex.join(words)
    named = replace(config, steps=1000, data=[Path(shareable_path(d)) for d in config.data], out=Path(config.out.name))
    assert _parse_train(words[2:]).training_fields() == named.training_fields()
    assert "--feature-size 24" in shlex.join(words)
    epochs = TrainConfig(data=[tmp_path / "d"], out=tmp_path / "m", epochs=3)
    line = epochs.command_line(steps=12)
    assert "--epochs 3" in line and "--steps" not in line
    for always in ("--backbone dynunet", "--norm uharmony", "--patch 64 64 64", "--batch 2", "--seed 0", "--filters"):
        assert always in line
    named = replace(epochs, data=[Path("d")], out=Path("m"))
    assert _parse_train(shlex.split(line)[2:]).training_fields() == named.training_fields()


def test_train_values_argparse_cannot_check_are_refused_in_one_line(tmp_path: Path) -> None:
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "m")]
    for extra, words in ((["--patch", "32", "32"], "--patch needs one or three sizes, got 2"),
                         (["--spacing", "1", "2"], "--spacing needs one or three sizes, got 2"),
                         (["--site-weight", "b"], "--site-weight b: expected SITE=WEIGHT")):  # fmt: skip
        with pytest.raises(InputError, match=words):
            _parse_train(base + extra)
    assert _parse_train([*base, "--patch", "32"]).patch == (32, 32, 32)


def test_to_argv_leaves_out_defaults_and_writes_values_the_parser_reads() -> None:
    options = [
        Option("--n", type=int, default=3),
        Option("--x", type=float),
        Option("--flag", action="store_true"),
        Option("--tag", action="append"),
        Option("files", nargs="+", type=Path),
    ]
    values = {"n": 3, "x": 3.0, "flag": False, "tag": ["a", "b"], "files": [Path("p q"), "-"]}
    assert to_argv(options, values) == ["--x", "3", "--tag", "a", "--tag", "b", "p q", "-"]
    assert to_argv(options, {"n": 3, "x": 0.1, "flag": True}, always=("n",)) == ["--n", "3", "--x", "0.1", "--flag"]


def test_slicers_segment_and_add_site_arguments_parse_with_the_engines_parsers(tmp_path: Path) -> None:
    model = read_model(REPO / "Resources" / "Models" / DEFAULT_MODEL_NAME)
    inputs = [tmp_path / "flair image.nrrd", tmp_path / "t1.nrrd", "-", tmp_path / "t2.nrrd"]  # no contrast agent
    out, gate_map = tmp_path / "l.nrrd", tmp_path / "g.seg.nrrd"
    argv = segment_arguments(model, inputs, out, "hospital-1.5t-old", "cpu", True, gate_map)
    args = build_parser().parse_args(["segment", *argv, "--progress", "json"])
    assert (args.model, args.channels, args.out) == (model.path, [Path(p) for p in inputs], out)
    assert (args.site, args.device, args.mirror_passes, args.gate_map) == ("hospital-1.5t-old", "cpu", 4, gate_map)
    plain = build_parser().parse_args(["segment", *segment_arguments(model, inputs, out, "auto", "auto")])
    assert (plain.site, plain.device, plain.mirror_passes, plain.gate_map) == ("auto", "auto", None, None)
    argv = add_site_arguments(model, tmp_path / "dataset.json", "clinic", tmp_path / "m-v2", 40, "cuda")
    args = build_parser().parse_args(["add-site", *argv])
    assert (args.model, args.data, args.out) == (model.path, tmp_path / "dataset.json", tmp_path / "m-v2")
    assert (args.site, args.steps, args.device, args.train_backbone) == ("clinic", 40, "cuda", False)


@pytest.mark.parametrize("module", [m.__name__ for m in COMMANDS])
def test_command_modules_import_without_the_cli_or_torch(module: str) -> None:
    """No import cycle with the CLI, and parsers are built without torch, MONAI, SciPy (they load when a verb runs)."""
    script = f"""
import sys
for name in ("UHarmonyLib.cli", *{HEAVY!r}):
    sys.modules[name] = None
import argparse, {module} as command
command.add_parser(argparse.ArgumentParser().add_subparsers())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr


def test_the_whole_parser_builds_without_torch() -> None:
    script = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None
from UHarmonyLib.cli import main
sys.exit(main(["train", "--help"]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0 and "--site-weight SITE=W" in run.stdout, run.stderr
