"""A real Flower deployment on 127.0.0.1: `uharmony federated server` and three `federated site` processes.

Each site has its own small synthetic dataset. The first run is without TLS (and with
Flower's server-side differential privacy on): it checks what reached the server and that
each site's bundle segments its own cases. The second runs with TLS and site keys made
in the test, and one site is killed during round 2; its certificate and key paths are relative. Rounds
are tiny: in a deployment every message starts a fresh ClientApp process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import REPO, run_main
from safetensors.torch import load_file

from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.deploy import free_port
from UHarmonyLib.federated.site import ROWS_NAME
from UHarmonyLib.federated.split import shared_names, site_tensor_names
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import load_bundle

pytestmark = pytest.mark.slow  # real Flower deployments: minutes

SITES = {
    "north": {"channels": ["T1", "FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
    "south": {"channels": ["T1", "FLAIR"], "gamma": 0.6, "scale": 3000.0, "lesions": {"count": [2, 2]}},
    "east": {"channels": ["T1", "FLAIR"], "gamma": 1.5, "bias": 0.3, "scale": 90.0, "lesions": {"count": [2, 2]}},
}
CONTRACT = ["--sites", "north,south,east", "--channels", "T1,FLAIR", "--local-steps", "2", "--patch", "32",
            "--spacing", "4", "--filters", "4,8,16"]  # fmt: skip
TIMEOUT = 900


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One dataset per site, each generated on its own (a site holds only its own cases)."""
    out = {}
    for k, (name, spec) in enumerate(SITES.items()):
        root = tmp_path_factory.mktemp(f"data-{name}")
        (root / "spec.json").write_text(json.dumps({"name": name, "sites": [{"name": name, **spec}]}))
        run = run_main("synth", "--scenario", root / "spec.json", "--out", root / "data", "--spacing", 4,
                       "--cases-per-site", 3, "--seed", k)  # fmt: skip
        assert run.code == 0, run
        out[name] = root / "data" / "dataset.json"
    return out


def _start(*args: object, log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "UHarmonyLib", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(process: subprocess.Popen[bytes]) -> None:
    """The process and everything it started (SuperNode, SuperExec, ClientApp)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_port(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        assert server.poll() is None, log.read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"SuperLink not listening: {log.read_text()}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        _kill(p)


def _own_case(data: Path) -> list[sitk.Image]:
    entry = json.loads(data.read_text())["training"][0]
    return [sitk.ReadImage(str(data.parent / p), sitk.sitkFloat32) for p in entry["image"]]


def test_deployment_keeps_site_rows_home_and_each_site_gets_a_working_bundle(
    site_data: dict[str, Path], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    server_log = tmp_path / "server.log"
    dp = ["--dp-noise", "0.001", "--dp-clip", "100"]
    server = _start("federated", "server", *CONTRACT, "--rounds", 2, "--out", tmp_path / "server",
                    "--address", f"127.0.0.1:{port}", *dp, log=server_log)  # fmt: skip
    processes.append(server)
    _wait_port(port, server, server_log)
    for name, data in site_data.items():
        private = ["--private"] if name == "south" else []
        site = _start("federated", "site", "--site", name, "--data", data, "--state", tmp_path / name,
                      "--superlink", f"127.0.0.1:{port}", *private, log=tmp_path / f"{name}.log")  # fmt: skip
        processes.append(site)
    assert server.wait(TIMEOUT) == 0, server_log.read_text()[-3000:]

    record = json.loads((tmp_path / "server" / "server.json").read_text())
    assert record["status"] == "finished"
    run_log = (tmp_path / "server" / "run.log").read_text(errors="replace")
    assert "central DP noise" in run_log  # Flower's server-side DP wrapper clipped and noised each round
    assert [(r["round"], r["sites"]) for r in record["rounds"]] == [(1, 3), (2, 3)]
    net = Federation(sites="north,south,east", channels="T1,FLAIR", patch=32, spacing=4.0, filters="4,8,16").network()
    shared, local = set(shared_names(net)), set(site_tensor_names(net))
    for phase in ("round 1", "round 2"):
        replies = record["received"][phase]
        assert len(replies) == 3
        for reply in replies:
            assert list(reply["tensors"]) == ["arrays"] and set(reply["tensors"]["arrays"]) == shared
    stored = load_file(str(tmp_path / "server" / "shared.safetensors"))
    assert set(stored) == shared and not set(stored) & local
    published = {r["site"]: r["tensors"] for r in record["received"]["publish"]}
    assert set(published["south"]) == {"bank"}  # the private site's rows never left it
    assert set(published["north"]) == set(published["east"]) == {"bank", "rows"}
    assert set(published["north"]["rows"]) == local
    assert record["received"]["finish"] and all(not r["tensors"] for r in record["received"]["finish"])

    expected_sites = {"north": ["north", "east"], "south": ["north", "south", "east"], "east": ["north", "east"]}
    for name, path in record["bundles"].items():
        bundle = load_bundle(Path(path))
        assert Path(path).parent == tmp_path / name
        assert bundle.site_names == expected_sites[name]
        result = segment_volumes(bundle, _own_case(site_data[name]))
        assert result.gate.chosen == name
    entry = json.loads(site_data["east"].read_text())["training"][0]
    out = tmp_path / "east-seg.nii.gz"
    run = run_main("segment", "--model", record["bundles"]["east"],
                   *[site_data["east"].parent / p for p in entry["image"]], "--out", out)  # fmt: skip
    assert run.code == 0, run
    assert sitk.ReadImage(str(out)).GetSize() == _own_case(site_data["east"])[0].GetSize()


def test_tls_with_site_keys_survives_a_site_that_dies_mid_round(
    site_data: dict[str, Path], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    certs = tmp_path / "certs"
    run = run_main("federated", "certs", "--out", certs, "--host", "127.0.0.1", *[f"--site={s}" for s in SITES])
    assert run.code == 0, run
    assert oct((certs / "server.key").stat().st_mode)[-3:] == "600"
    port = free_port()
    server_log = tmp_path / "server.log"
    keys = [f"--site-key=certs/sites/{s}.pub" for s in SITES]  # paths relative to the folder each process runs in
    server = _start("federated", "server", *CONTRACT, "--rounds", 2, "--min-sites", 2, "--round-timeout", 90,
                    "--out", tmp_path / "server", "--address", f"127.0.0.1:{port}", "--tls", "certs", *keys,
                    log=server_log, cwd=tmp_path)  # fmt: skip
    processes.append(server)
    _wait_port(port, server, server_log)
    sites = {}
    for name, data in site_data.items():
        sites[name] = _start("federated", "site", "--site", name, "--data", data, "--state", tmp_path / name,
                             "--superlink", f"127.0.0.1:{port}", "--root-certificates", "certs/ca.crt",
                             "--auth-key", f"certs/sites/{name}.key", log=tmp_path / f"{name}.log",
                             cwd=tmp_path)  # fmt: skip
        processes.append(sites[name])
    # east dies as round 2 starts: after the server has aggregated round 1
    record_path = tmp_path / "server" / "server.json"
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        assert server.poll() is None, server_log.read_text()[-3000:]
        if record_path.is_file() and json.loads(record_path.read_text()).get("rounds"):
            break
        time.sleep(0.5)
    _kill(sites["east"])
    assert server.wait(TIMEOUT) == 0, server_log.read_text()[-3000:]

    superlink_log = (tmp_path / "server" / "superlink.log").read_text()
    assert "TLS disabled" not in superlink_log and "authentication is disabled" not in superlink_log
    record = json.loads(record_path.read_text())
    assert [(r["round"], r["sites"]) for r in record["rounds"]] == [(1, 3), (2, 2)]
    assert set(record["bundles"]) == {"north", "south"}
    east_state = next((tmp_path / "east").glob(f"*/{ROWS_NAME}"))
    assert load_file(str(east_state))  # its round-1 rows are intact and readable
    east_record = json.loads((east_state.parent / "site.json").read_text())
    assert [r["round"] for r in east_record["rounds"]] == [1]
    for name in ("north", "south"):
        assert load_bundle(Path(record["bundles"][name])).site_names == ["north", "south"]
