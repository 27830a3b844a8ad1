"""Model bundles: exact round trip, `models info`, and a one-line refusal for every untrustworthy bundle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import (
    CHANNELS,
    LABELS,
    REPO,
    SITES,
    assert_one_line_error,
    blob_array,
    run_main,
    run_subprocess,
    save_tiny_bundle,
    tiny_net,
    write_volume_file,
)

from UHarmonyLib.errors import BundleError, InputError
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.model.card import CARD_NAME, FORMAT_VERSION, WEIGHTS_NAME, card_digest, read_card
from UHarmonyLib.model.weights import load_bundle, make_card, save_bundle, unique_state
from UHarmonyLib.nn.site_weights import one_hot_weights


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _edit_card(path: Path, edit: Callable[[dict], None], rehash: bool) -> None:
    card = json.loads((path / CARD_NAME).read_text())
    edit(card)
    if rehash:
        card["card_sha256"] = card_digest(card)
    (path / CARD_NAME).write_text(json.dumps(card, indent=2))


def _truncate_weights(path: Path) -> None:
    w = path / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:-100])


def _flip_weight_byte(path: Path) -> None:
    w = path / WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[len(data) - 50] ^= 0xFF  # inside the tensor data, same size
    w.write_bytes(bytes(data))


def _rename_label(path: Path) -> None:
    _edit_card(path, lambda c: c["labels"][0].update(name="renamed lesion"), rehash=False)


def _newer_format(path: Path) -> None:
    _edit_card(path, lambda c: c.update(format_version=FORMAT_VERSION + 1), rehash=True)


def _wider_architecture(path: Path) -> None:
    _edit_card(path, lambda c: c["architecture"].update(filters=[4, 8, 32]), rehash=True)


def _shallower_architecture(path: Path) -> None:
    _edit_card(path, lambda c: c["architecture"].update(filters=[4, 8]), rehash=True)


def _unknown_backbone(path: Path) -> None:
    _edit_card(path, lambda c: c["architecture"].update(backbone="vnet"), rehash=True)


def _truncate_card(path: Path) -> None:
    card = path / CARD_NAME
    card.write_text(card.read_text()[:200])


def _resigned(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A card edited and re-hashed, as a careless tool or a malicious author would: the checksum passes."""
    return lambda path: _edit_card(path, edit, rehash=True)


def _file_entry(name: str) -> Callable[[dict], None]:
    return lambda c: c["files"].update({name: {"sha256": "0" * 64, "bytes": 1}})


def _weights_linked_out(path: Path) -> None:
    outside = path.parent / "elsewhere.safetensors"
    (path / WEIGHTS_NAME).rename(outside)
    (path / WEIGHTS_NAME).symlink_to(outside)  # same bytes, so size and checksum would pass


REFUSALS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-weights": (_truncate_weights, "truncated"),
    "tampered-weights": (_flip_weight_byte, "checksum differs"),
    "edited-card": (_rename_label, "checksum mismatch"),
    "newer-format": (_newer_format, f"format version {FORMAT_VERSION + 1} is newer"),
    "wider-architecture": (_wider_architecture, "do not fit"),
    "shallower-architecture": (_shallower_architecture, "cannot build it"),
    "unknown-backbone": (_unknown_backbone, "unknown backbone 'vnet'"),
    "truncated-card": (_truncate_card, "not valid JSON"),
    "missing-card": (lambda p: (p / CARD_NAME).unlink(), f"no {CARD_NAME}"),
    "missing-weights": (lambda p: (p / WEIGHTS_NAME).unlink(), "missing"),
    "missing-folder": (lambda p: shutil.rmtree(p), "not found"),
    "overlap-out-of-range": (_resigned(lambda c: c["inference"].update(overlap=1.5)), "'inference.overlap': 1.5"),
    "huge-patch": (
        _resigned(lambda c: c["inference"].update(patch_size=[4096] * 3)),
        "'inference.patch_size': entry 0: 4096 is outside [1, 512]",
    ),
    "string-for-a-number": (
        _resigned(lambda c: c["preprocessing"].update(spacing=["1.5", 1.5, 1.5])),
        "'preprocessing.spacing': entry 0: '1.5' is not a finite number",
    ),
    "files-entry-a-string": (
        _resigned(lambda c: c["files"].update({WEIGHTS_NAME: "abc"})),
        f"'files.{WEIGHTS_NAME}': 'abc' is not an object",
    ),
    "file-outside-the-bundle": (
        _resigned(_file_entry("../../../../etc/passwd")),
        "'../../../../etc/passwd' is not a plain file name",
    ),
    "absolute-file-path": (_resigned(_file_entry("/etc/passwd")), "'/etc/passwd' is not a plain file name"),
    "weights-linked-out": (_weights_linked_out, "not a regular file inside the bundle"),
    "gate-bank-dropped": (
        _resigned(lambda c: c["inference"].update(familiar_distance=1.0)),
        "sets an unfamiliar-case distance but lists no gate_bank.safetensors",
    ),
    "site-name-a-path": (
        _resigned(lambda c: c["sites"][0].update(name="../evil")),
        "'sites[0].name': '../evil' is not a plain name",
    ),
    "label-colour-not-hex": (
        _resigned(lambda c: c["labels"][0].update(color="red")),
        "'labels[0].color': 'red' does not match",
    ),
}


def test_round_trip_identical_state_and_outputs(tiny_bundle: Path) -> None:
    """A loaded bundle holds exactly the saved weights and gives exactly the saved network's outputs."""
    original = tiny_net(0)  # the network the session bundle was saved from
    loaded = load_bundle(tiny_bundle)
    assert not loaded.net.training
    saved, restored = unique_state(original), unique_state(loaded.net)
    assert list(saved) == list(restored)
    for key, tensor in saved.items():
        assert torch.equal(tensor, restored[key]), key
    assert loaded.site_names == [s["name"] for s in SITES]
    assert loaded.channel_names == [c["name"] for c in CHANNELS]
    assert loaded.labels == LABELS
    assert loaded.config == original.config
    torch.manual_seed(7)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        a_seg, a_gate = original(x)
        b_seg, b_gate = loaded.net(x)
        a_site = original.segment(x, one_hot_weights(1, 3, batch=2))
        b_site = loaded.net.segment(x, one_hot_weights(1, 3, batch=2))
    assert torch.equal(a_seg, b_seg) and torch.equal(a_gate, b_gate) and torch.equal(a_site, b_site)


def test_models_info_text_and_json(tiny_bundle: Path) -> None:
    """`uharmony models info` prints the card in words, and `--json` prints the card itself."""
    card = json.loads((tiny_bundle / CARD_NAME).read_text())
    text = run_main("models", "info", tiny_bundle)
    assert text.code == 0, text.stderr
    assert "tiny v1" in text.stdout
    assert "1=lesion core #ff0000" in text.stdout
    assert "FLAIR (MR)" in text.stdout
    assert "alpha (scanner 1.5T)" in text.stdout
    assert "verified" in text.stdout
    as_json = run_main("models", "info", tiny_bundle, "--json")
    assert as_json.code == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    assert {"format_version", "channels", "labels", "sites"} <= set(printed)
    assert printed == card
    assert printed["format_version"] == FORMAT_VERSION


@pytest.mark.bad_input("segment, models info: a model bundle", by="case", words={k: v[1] for k, v in REFUSALS.items()})
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_bundle(case: str, tiny_bundle: Path, tmp_path: Path, volume_file: Path) -> None:
    """Every untrustworthy bundle is refused with a one-line BundleError naming the problem, in the API and CLI."""
    damage, expected = REFUSALS[case]
    path = _copy(tiny_bundle, tmp_path)
    damage(path)
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    assert str(path) in message or str(path / WEIGHTS_NAME) in message or str(path / CARD_NAME) in message

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = run_main("segment", "--model", path, volume_file, "--out", out_dir / "seg.nii.gz", "--device", "cpu")
    line = assert_one_line_error(run)
    assert expected in line
    assert run.code == BundleError.exit_code
    assert list(out_dir.iterdir()) == []

    # `models info` loads the bundle fully, so it refuses exactly what `segment` refuses
    info_run = run_main("models", "info", path)
    assert expected in assert_one_line_error(info_run)
    assert info_run.code == BundleError.exit_code
    assert info_run.stdout == ""


def test_refused_bundle_real_process_and_segment(tiny_bundle: Path, tmp_path: Path, volume_file: Path) -> None:
    """In a real process a tampered bundle stops `segment` with exit 3, one stderr line and no output file."""
    path = _copy(tiny_bundle, tmp_path)
    _flip_weight_byte(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = run_subprocess("segment", "--model", path, volume_file, "--out", out_dir / "seg.nii.gz", "--device", "cpu")
    line = assert_one_line_error(run)
    assert "checksum differs" in line
    assert run.code == 3
    assert list(out_dir.iterdir()) == []


def test_models_list_marks_unusable_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    """`models list --json` lists a good bundle as ok and a tampered one with its problem."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_bundle, folder / "a-good")
    shutil.copytree(tiny_bundle, folder / "b-bad")
    _truncate_weights(folder / "b-bad")
    shutil.copytree(tiny_bundle, folder / "c-wrong-type")
    _edit_card(folder / "c-wrong-type", lambda c: c["inference"].update(batch_size="two"), rehash=True)
    shutil.copytree(tiny_bundle, folder / "d-good")
    run = run_main("models", "list", folder, "--json")
    assert run.code == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [r["ok"] for r in rows] == [True, False, False, True]  # one bad bundle does not stop the listing
    assert rows[0]["sites"] == [s["name"] for s in SITES]
    assert "truncated" in rows[1]["problem"]
    assert "'inference.batch_size': 'two' is not an integer" in rows[2]["problem"]


def test_save_refuses_existing_folder_and_leaves_it_untouched(tiny_bundle: Path, tmp_path: Path) -> None:
    """Saving onto an existing folder is refused and its files keep their exact contents."""
    path = _copy(tiny_bundle, tmp_path)
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    net = tiny_net(5)
    card = read_card(path)
    with pytest.raises(InputError, match="already exists"):
        save_bundle(net, card, path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    load_bundle(path)  # still a valid bundle


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    """A save that fails half-way (weights that cannot be serialized) leaves neither the folder nor a temp folder."""
    net = tiny_net(0)
    net.register_buffer("unsaveable", torch.empty(3, device="meta"))  # real tensor with no data to write
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)):
        save_tiny_bundle(parent / "tiny", net)
    assert list(parent.iterdir()) == []


def test_inconsistent_card_is_refused_before_writing(tmp_path: Path) -> None:
    """A card whose labels do not match the network's outputs is refused and nothing is written."""
    net = tiny_net(0)
    with pytest.raises(BundleError, match="out_channels differs"):
        make_card(net, name="bad", version=1, channels=CHANNELS, labels=LABELS[:1], sites=SITES)
    card = make_card(net, name="ok", version=1, channels=CHANNELS, labels=LABELS, sites=SITES)
    card["sites"] = SITES[:2]
    with pytest.raises(BundleError, match="num_sites differs"):
        save_bundle(net, card, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_a_write_killed_before_its_rename_is_never_listed_and_is_cleaned_later(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """SIGKILL between a child bundle's card and its rename: the hidden folder is not a bundle, and the next
    bundle written there removes it (its process is gone); a live writer's folder is left alone."""
    folder = tmp_path / "models"
    script = f"""
import shutil, sys, time
from pathlib import Path
from UHarmonyLib.files.atomic import atomic_dir
with atomic_dir(Path({str(folder / "tiny-v2")!r})) as tmp:
    for f in Path({str(tiny_bundle)!r}).iterdir():
        shutil.copy(f, tmp / f.name)
    print("written", flush=True)
    time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None and child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    (left,) = folder.iterdir()
    assert left.name.startswith(".tiny-v2-") and (left / CARD_NAME).is_file()
    assert json.loads(run_main("models", "list", folder, "--json").stdout) == []
    live = folder / f".other-v1-uharmony-pid{os.getpid()}-abc"  # this process is alive: not stale
    live.mkdir()
    save_bundle(tiny_net(0), read_card(tiny_bundle), folder / "tiny-v3")
    assert sorted(p.name for p in folder.iterdir()) == [live.name, "tiny-v3"]


class _Payload:
    """Unpickling this runs a command: what a pickled 'model' from an untrusted source can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_place_of_the_weights_never_runs(tiny_bundle: Path, tmp_path: Path, volume_file: Path) -> None:
    """Weights that are a pickle (here with a payload, signed into the card by its author) are refused, unrun."""
    import pickle

    path = _copy(tiny_bundle, tmp_path)
    marker = tmp_path / "payload-ran"
    (path / WEIGHTS_NAME).write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    _edit_card(path, lambda c: c["files"].update({WEIGHTS_NAME: _file_meta(path / WEIGHTS_NAME)}), rehash=True)
    with pytest.raises(BundleError, match="unreadable weights"):
        load_bundle(path)
    run = run_main("segment", "--model", path, volume_file, "--out", tmp_path / "seg.nii.gz")
    assert run.code == BundleError.exit_code and not marker.exists()


def _file_meta(path: Path) -> dict[str, object]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def test_concurrent_writers_of_one_output_leave_one_whole_file(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two `uharmony segment` processes writing the same --out at once: the file is one run's whole output."""
    cases = [
        write_volume_file(tmp_path / f"case{i}.nii.gz", array_zyx=blob_array((24, 20, 16), seed=i)) for i in (1, 2)
    ]
    alone = []
    for i, case in enumerate(cases):
        assert run_main("segment", "--model", tiny_bundle, case, "--out", tmp_path / f"alone{i}.nii.gz").code == 0
        alone.append(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"alone{i}.nii.gz"))))
    assert not np.array_equal(*alone)
    out = tmp_path / "shared" / "seg.nii.gz"
    command = [sys.executable, "-m", "UHarmonyLib", "segment", "--model", str(tiny_bundle), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        runs = [subprocess.Popen([*command, str(c)], cwd=REPO, env=env, stderr=subprocess.PIPE) for c in cases]
        assert [r.wait(timeout=300) for r in runs] == [0, 0]
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        assert any(np.array_equal(written, a) for a in alone)
        assert sorted(p.name for p in out.parent.iterdir()) == ["seg.nii.gz"]  # no temporary file left
