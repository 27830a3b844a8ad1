"""Real Flower processes: the SuperLink and the run for the server, one SuperNode per site.

Flower 1.41 serves its Fleet, Control and runtime APIs over one HTTP(S) address
(`--host/--port`). Every process gets the same environment: telemetry, update checks
and runtime installs off, FLWR_HOME inside the server's or site's own folder, and this
Python's scripts first on PATH (the SuperLink and SuperNodes start `flower-superexec`).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import InputError, UHarmonyError
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.files.atomic import write_text_atomic

CONNECTION = "uharmony"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Tls:
    """Certificate files of a TLS deployment (see `uharmony federated certs`)."""

    ca: Path
    cert: Path | None = None  # the SuperLink's certificate and key (server side only)
    key: Path | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> Tls:
        """The files in `folder`, as absolute paths: Flower's CLI refuses relative ones in its config."""
        folder = folder.resolve()
        files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
        missing = next((p for p in files.values() if not p.is_file()), None)
        if missing is not None:
            raise InputError(f"{missing}: missing; create the files with `uharmony federated certs --out {folder}`")
        return cls(**files)


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process this package starts."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_HOME=str(home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    return env


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"{address}: expected HOST:PORT, for example 127.0.0.1:9091")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(address: str, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> None:
    """Until something accepts connections at `address`; a process that exits first is an error."""
    host, port = split_address(address)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise InputError(f"{log}: the Flower process exited ({process.returncode}): {' '.join(tail)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise InputError(f"{address}: nothing listening after {timeout:.0f} s (see {log})")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a process we started, with its children (each runs in its own session)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


# ---------------------------------------------------------------- server side


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """The Flower App project that `flwr run` submits: UHarmony's apps, this run's config."""

    def toml(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "uharmony-federated"',
        'version = "1.0.0"',
        'description = "UHarmony federated training (apps in the installed UHarmonyLib)"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "uharmony"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "UHarmonyLib.federated.server_app:app"',
        'clientapp = "UHarmonyLib.federated.client_app:app"',
        "",
        "[tool.flwr.app.config]",
        *[f"{k} = {toml(v)}" for k, v in run_config.items()],
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "pyproject.toml", "\n".join(lines) + "\n")
    return folder


def write_connection(home: Path, address: str, tls: Tls | None) -> None:
    """The `flwr` CLI's SuperLink connection (FLWR_HOME/config.toml)."""
    security = f"root-certificates = {json.dumps(str(tls.ca))}" if tls else "insecure = true"
    text = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n'
    home.mkdir(parents=True, exist_ok=True)
    write_text_atomic(home / "config.toml", text)


def start_superlink(
    out: Path, address: str, tls: Tls | None, env: dict[str, str], authenticate: bool = False
) -> subprocess.Popen[bytes]:
    host, port = split_address(address)
    command = [_tool("flower-superlink"), "--host", host, "--port", str(port), "--database", str(out / "superlink.db")]
    if tls:
        command += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key), "--ssl-ca-certfile", str(tls.ca)]
    else:
        command.append("--insecure")
    if authenticate:
        command.append("--enable-supernode-auth")
    log = out / "superlink.log"
    process = _spawn(command, env, log)
    try:
        wait_listening(address, process, log)
    except BaseException:
        stop(process)
        raise
    return process


def register_sites(keys: list[Path], env: dict[str, str], log: Path) -> None:
    """Admit each site's public key (OpenSSH EC) before its SuperNode connects."""
    for key in keys:
        if not key.is_file():
            raise InputError(f"{key}: site public key not found")
        done = subprocess.run(
            [_tool("flwr"), "supernode", "register", str(key.resolve()), CONNECTION, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with open(log, "a", encoding="utf-8") as f:
            f.write(done.stdout + done.stderr)
        try:  # `flwr` exits 0 with {"success": false} for some refusals
            reply = json.loads(done.stdout)
        except json.JSONDecodeError:
            reply = {}
        if done.returncode != 0 or not reply.get("success"):
            why = " ".join(str(reply.get("error-message", "")).split()) or f"see {log}"
            raise InputError(f"{key}: the SuperLink refused to register this site key: {why}")


def run_status(env: dict[str, str]) -> dict[str, Any]:
    """The newest run's record from the SuperLink (`flwr run` exits 0 even when a run failed)."""
    done = subprocess.run(
        [_tool("flwr"), "ls", CONNECTION, "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except json.JSONDecodeError:
        runs = []
    return max(runs, key=lambda r: r.get("pending-at", "")) if runs else {}


def serve_deployment(
    contract: Federation,
    out: Path,
    address: str,
    tls: Tls | None = None,
    site_keys: list[Path] | None = None,
    dp: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Any]:
    """Start the SuperLink, submit the run, wait for it and stop the SuperLink; returns server.json."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "flwr-home"
    env = flower_env(home)
    write_connection(home, address, tls)
    run_config = {**contract.to_run_config(), "server-out": str(out), "dp-noise": dp[0], "dp-clip": dp[1]}
    app = write_app(out / "app", run_config)
    superlink = start_superlink(out, address, tls, env, authenticate=bool(site_keys))
    try:
        if site_keys:
            register_sites(site_keys, env, out / "run.log")
        with open(out / "run.log", "ab") as log:
            subprocess.run(
                [_tool("flwr"), "run", str(app), CONNECTION, "--stream"], env=env, stdout=log, stderr=log, check=False
            )
        status = run_status(env)
    finally:
        stop(superlink)
    record_path = out / "server.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    if status.get("status") != "finished:completed" or record.get("status") != "finished":
        why = record.get("error") or status.get("status-details") or status.get("status") or "no run record"
        raise InputError(f"{out}: the federated run did not finish: {why} (see {out / 'run.log'})")
    return record


# ---------------------------------------------------------------- site side


def site_command(
    superlink: str,
    site: str,
    data: Path,
    state: Path,
    tls_ca: Path | None = None,
    auth_key: Path | None = None,
    publish: bool = True,
    local_port: int | None = None,
) -> list[str]:
    """The SuperNode command line of one site."""
    node_config = (
        f"site={json.dumps(site)} data={json.dumps(str(data.resolve()))} state={json.dumps(str(state.resolve()))}"
    )
    node_config += f" publish={'true' if publish else 'false'}"
    command = [_tool("flower-supernode"), "--superlink", superlink, "--node-config", node_config]
    command += ["--host", "127.0.0.1", "--port", str(local_port or free_port())]
    command += ["--root-certificates", str(tls_ca.resolve())] if tls_ca else ["--insecure"]
    if auth_key:
        command += ["--auth-supernode-private-key", str(auth_key.resolve())]
    return command


# what Flower's SuperNode prints when the SuperLink turns it away, and what the site should do
REFUSED = "Failed to initialize the connection to the SuperLink."
HINTS = {
    "[code: 2001]": "start the site with --auth-key, the key whose .pub the server admits with --site-key",
    "[code: 2004]": "this --auth-key is not one the server admits with --site-key",
    "CERTIFICATE_VERIFY_FAILED": "--root-certificates is not the CA of the SuperLink's certificate",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def refusal(lines: list[str]) -> str | None:
    """Why the SuperLink refused the node, from the SuperNode's output (None if it did not)."""
    text = [ANSI.sub("", line).strip() for line in lines]
    if REFUSED not in text:
        return None
    reason = []
    for line in text[text.index(REFUSED) + 1 :]:
        if not line or line.startswith("The SuperNode could not"):  # Flower's generic help follows
            break
        reason.append(line)
    why = " ".join(reason) or "no reason given"
    hint = next((h for marker, h in HINTS.items() if marker in why), None)
    return f"{why} ({hint})" if hint else why


def run_site_node(command: list[str], env: dict[str, str], log: Path, superlink: str) -> None:
    """Run the SuperNode until it exits, its output copied to stdout and `log`; one error line if it fails.

    The node stays in this process's group, so whatever stops the group (a terminal's Ctrl-C,
    a service manager, kill -9 of the group) stops it too. An interrupt that reaches only this
    process (SIGTERM turned into one) stops the node, which stops the processes it started,
    before the interrupt propagates.
    """
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with open(log, "ab") as saved:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.stdout
        assert output is not None

        def copy() -> None:
            for raw in output:
                saved.write(raw)
                saved.flush()
                line = raw.decode("utf-8", errors="replace")
                tail.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        try:
            code = process.wait()
        except BaseException:
            process.terminate()  # Flower's SuperNode shuts down gracefully on SIGTERM
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        finally:
            copier.join(10)  # until its helpers, which share the pipe, have gone too
    if code == 0:
        return
    why = refusal(list(tail))
    if why is not None:
        raise InputError(f"--superlink {superlink}: the SuperLink refused this site: {why} (see {log})")
    last = next((ANSI.sub("", line).strip() for line in reversed(tail) if line.strip()), "no output")
    raise UHarmonyError(f"{log}: the site's SuperNode exited with code {code}: {last}")
