"""`uharmony federated`: certificates never silently replaced, names kept inside their folders, refused sites said so.

Real files, a real SuperLink (TLS, SuperNode authentication) and real SuperNodes on
127.0.0.1, a real SIGTERM. Each site here connects to the SuperLink only; no run is submitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, run_main, run_subprocess

from UHarmonyLib.commands.federated import contract_from_args
from UHarmonyLib.errors import InputError
from UHarmonyLib.federated.certs import make_certs
from UHarmonyLib.federated.deploy import (
    Tls,
    flower_env,
    free_port,
    register_sites,
    start_superlink,
    stop,
    write_connection,
)


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` and the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------- certs


def _certs_twice(root: Path) -> list[str]:
    assert run_main("federated", "certs", "--out", root / "certs", "--site", "north").code == 0
    return ["--out", str(root / "certs"), "--site", "north"]


def _certs_again_for_a_new_site(root: Path) -> list[str]:
    assert run_main("federated", "certs", "--out", root / "certs").code == 0
    return ["--out", str(root / "certs"), "--site", "south"]


def _site_a_path(root: Path) -> list[str]:
    (root / "inner").mkdir()
    return ["--out", str(root / "inner" / "certs"), "--site", "../../victim"]


def _site_with_a_slash(root: Path) -> list[str]:
    return ["--out", str(root / "certs"), "--site", "north/key"]


def _host_with_a_space(root: Path) -> list[str]:
    return ["--out", str(root / "certs"), "--host", "my server"]


def _out_a_file(root: Path) -> list[str]:
    (root / "certs").write_text("not a folder")
    return ["--out", str(root / "certs")]


CERTS_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "run-twice": (_certs_twice, "ca.crt: already exists; use --overwrite"),
    "run-again-to-add-a-site": (_certs_again_for_a_new_site, "ca.crt: already exists; use --overwrite"),
    "site-name-a-path": (_site_a_path, "--site '../../victim': use 1-64 letters"),
    "site-name-with-a-slash": (_site_with_a_slash, "--site 'north/key': use 1-64 letters"),
    "host-with-a-space": (_host_with_a_space, "--host 'my server': not an IP address or a DNS host name"),
    "out-a-file": (_out_a_file, "is a file, not a folder"),
}


@pytest.mark.bad_input("federated certs", words={k: v[1] for k, v in CERTS_CASES.items()})
@pytest.mark.parametrize("case", list(CERTS_CASES))
def test_certs_refusals(tmp_path: Path, case: str) -> None:
    """Refused with one error line naming the file or argument, exit code 2, and no file written or changed."""
    prepare, words = CERTS_CASES[case]
    args = prepare(tmp_path)
    before = _tree(tmp_path)
    run = run_main("federated", "certs", *args)
    assert run.code == 2
    assert words in assert_one_line_error(run)
    assert _tree(tmp_path) == before
    assert not list(tmp_path.parent.rglob("victim*"))


def test_certs_overwrite_replaces_every_file_and_keeps_keys_private(tmp_path: Path) -> None:
    first = make_certs(tmp_path, ["127.0.0.1", "fl.example.org"], ["north"])
    before = _tree(tmp_path)
    run = run_main("federated", "certs", "--out", tmp_path, "--site", "north", "--overwrite")
    assert run.code == 0, run
    assert run.stdout.split() == [str(p) for p in first]
    after = _tree(tmp_path)
    assert set(after) == set(before) and all(after[k] != before[k] for k in before)
    for private in ("ca.key", "server.key", "sites/north.key"):
        assert oct((tmp_path / private).stat().st_mode)[-3:] == "600"
    assert not [p for p in tmp_path.rglob(".*")]  # no staged file left behind


# ---------------------------------------------------------------- contract options


def test_filters_take_the_train_form_and_the_comma_form() -> None:
    from UHarmonyLib.cli import build_parser

    for words in (["8", "16", "32"], ["8,16,32"], ["8,", "16", "32"]):
        args = build_parser().parse_args(["federated", "simulate", "--sites", "a,b", "--data", "d.json",
                                          "--out", "o", "--filters", *words])  # fmt: skip
        assert contract_from_args(args).filter_widths == (8, 16, 32)
    default = build_parser().parse_args(["federated", "simulate", "--sites", "a,b", "--data", "d.json", "--out", "o"])
    assert contract_from_args(default).filter_widths == (16, 32, 64, 128)


CONTRACT_CASES = {
    "site-name-a-path": (["--sites", "north,../../evil"], "--sites '../../evil': use 1-64 letters"),
    "bundle-name-a-path": (["--sites", "north,south", "--name", "x/../../y"], "--name 'x/../../y': use 1-64 letters"),
    "filters-not-numbers": (["--sites", "north,south", "--filters", "8", "wide"], "--filters 8,wide: needs at least"),
    "one-filter": (["--sites", "north,south", "--filters", "8"], "--filters 8: needs at least two"),
    "eval-every-negative": (["--sites", "north,south", "--eval-every", "-1"], "--eval-every -1: must be 0 (never)"),
    "server-momentum-one": (
        ["--sites", "north,south", "--strategy", "fedavgm", "--server-momentum", "1"],
        "--server-momentum 1.0: must be in [0, 1)",
    ),
}


@pytest.mark.bad_input("federated simulate", words={k: v[1] for k, v in CONTRACT_CASES.items()})
@pytest.mark.parametrize("case", list(CONTRACT_CASES))
def test_contract_refusals(tmp_path: Path, case: str) -> None:
    """Refused with one error line naming the option, exit code 2, before anything is written or started."""
    args, words = CONTRACT_CASES[case]
    data = tmp_path / "dataset.json"
    data.write_text("{}")
    run = run_main("federated", "simulate", *args, "--data", data, "--out", tmp_path / "out")
    assert run.code == 2
    assert words in assert_one_line_error(run)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sites and the SuperLink


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    """A real SuperLink with TLS and SuperNode authentication that admits north's key only."""
    root = tmp_path_factory.mktemp("superlink")
    make_certs(root / "certs", ["127.0.0.1"], ["north"])
    make_certs(root / "other", ["127.0.0.1"], ["north"])  # another CA, and a north key the server never saw
    data = root / "dataset.json"
    data.write_text("{}")  # the SuperNode reads the dataset only when a run sends a message
    address = f"127.0.0.1:{free_port()}"
    env = flower_env(root / "flwr-home")
    tls = Tls.from_folder(root / "certs")
    write_connection(root / "flwr-home", address, tls)
    process = start_superlink(root, address, tls, env, authenticate=True)
    try:
        register_sites([root / "certs" / "sites" / "north.pub"], env, root / "register.log")
        yield {"root": root, "address": address, "data": data, "home": root / "flwr-home"}
    finally:
        stop(process)


REFUSED_SITES = {
    "no-auth-key": (["--root-certificates", "certs/ca.crt"], "start the site with --auth-key"),
    "key-the-server-never-admitted": (
        ["--root-certificates", "certs/ca.crt", "--auth-key", "other/sites/north.key"],
        "not one the server admits with --site-key",
    ),
    "another-ca": (
        ["--root-certificates", "other/ca.crt", "--auth-key", "certs/sites/north.key"],
        "--root-certificates is not the CA",
    ),
}


@pytest.mark.bad_input("federated site", words={k: v[1] for k, v in REFUSED_SITES.items()})
@pytest.mark.parametrize("case", list(REFUSED_SITES))
def test_a_refused_site_says_why(superlink: dict[str, Path | str], tmp_path: Path, case: str) -> None:
    """Refused by the SuperLink: one error line saying so and why, exit code 2; Flower's output in the site's log."""
    files, words = REFUSED_SITES[case]
    root = Path(superlink["root"])
    args = [str(root / w) if w.endswith((".crt", ".key")) else w for w in files]
    run = run_main("federated", "site", "--site", "north", "--data", superlink["data"], "--state", tmp_path,
                   "--superlink", superlink["address"], *args)  # fmt: skip
    assert run.code == 2
    line = assert_one_line_error(run)
    assert "the SuperLink refused this site" in line and words in line, line
    assert "Failed to initialize the connection" in (tmp_path / "supernode.log").read_text(errors="replace")


def test_a_site_key_the_superlink_refuses_is_one_error(superlink: dict[str, Path | str], tmp_path: Path) -> None:
    key = tmp_path / "south.pub"
    key.write_text("ecdsa-sha2-nistp384 not-a-key south\n")
    with pytest.raises(InputError, match=f"{key}: the SuperLink refused to register this site key: .+"):
        register_sites([key], flower_env(Path(superlink["home"])), tmp_path / "register.log")


def _site_processes(state: Path) -> list[int]:
    """The SuperNode of the site with this state folder and the SuperExec it started."""
    commands = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    nodes = [pid for pid, cmd in commands.items() if "flower-supernode" in cmd and str(state) in cmd]
    return [pid for pid, cmd in commands.items() if pid in nodes or any(f"--parent-pid {n}" in cmd for n in nodes)]


def test_sigterm_stops_a_site_and_every_process_it_started(superlink: dict[str, Path | str], tmp_path: Path) -> None:
    root = Path(superlink["root"])
    state = tmp_path / "state"
    site = subprocess.Popen(
        [sys.executable, "-m", "UHarmonyLib", "federated", "site", "--site", "north", "--data", str(superlink["data"]),
         "--state", str(state), "--superlink", str(superlink["address"]),
         "--root-certificates", str(root / "certs" / "ca.crt"), "--auth-key", str(root / "certs/sites/north.key")],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        end = time.monotonic() + 120
        while len(_site_processes(state)) < 2:  # the SuperNode and the SuperExec it starts
            assert site.poll() is None and time.monotonic() < end, site.communicate()
            time.sleep(0.5)
        time.sleep(2)
        site.send_signal(signal.SIGTERM)
        out, err = site.communicate(timeout=60)
    finally:
        site.kill()
    assert site.returncode == 130, err
    assert err.decode().splitlines() == ["uharmony: error: interrupted"]
    end = time.monotonic() + 30  # the SuperExec notices its SuperNode has gone within seconds
    while _site_processes(state) and time.monotonic() < end:
        time.sleep(0.5)
    assert _site_processes(state) == []
    assert "terminated gracefully" in out.decode(errors="replace")  # Flower's own shutdown ran


# ---------------------------------------------------------------- simulate


@pytest.mark.slow
def test_simulate_prints_its_bundles_and_no_third_party_deprecation_notices(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"name": "one", "sites": [{"name": "north", "channels": ["T1", "FLAIR"]}]}')
    synth = run_main("synth", "--scenario", spec, "--out", tmp_path / "data", "--spacing", 4, "--cases-per-site", 3)
    assert synth.code == 0, synth
    run = run_subprocess("federated", "simulate", "--sites", "north,south", "--channels", "T1,FLAIR", "--rounds", 1,
                         "--local-steps", 1, "--patch", 32, "--spacing", 4, "--filters", 4, 8, 16,
                         "--data", tmp_path / "data" / "dataset.json", "--out", tmp_path / "sim")  # fmt: skip
    assert run.code == 0, run.stderr[-3000:]
    assert "DEPRECATED" not in run.stderr and "FutureWarning" not in run.stderr, run.stderr
    bundles = [line.split(": ", 1) for line in run.stdout.splitlines() if line.startswith("bundle of ")]
    assert [site for site, _ in bundles] == ["bundle of north", "bundle of south"], run.stdout  # by name
    assert all((Path(path) / "model.json").is_file() for _, path in bundles)
