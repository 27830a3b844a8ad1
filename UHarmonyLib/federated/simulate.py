"""The same apps in Flower's simulation runtime: a one-machine trial of a federation.

Each virtual SuperNode is one site (partition k is the contract's k-th site); a site's
dataset may hold other sites' cases too, since every node keeps only its own. Each
site's state still goes to its own folder, exactly as a deployed node's would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from UHarmonyLib.errors import InputError
from UHarmonyLib.federated.client_app import make_client_app
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.server_app import serve


@contextlib.contextmanager
def _without_deprecation_notices() -> Iterator[None]:
    """Flower's and Ray's notices about their own APIs and settings: nothing a UHarmony user can act on."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("DEPRECATED FEATURE", "fraction_evaluate is set to 0.0"))

    flower = logging.getLogger("flwr")
    flower.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
            yield
    finally:
        flower.removeFilter(keep)


def simulate(contract: Federation, data: list[Path], out: Path, cpus_per_site: float = 1.0) -> dict[str, Any]:
    """Run the federation in-process; returns the server's record (also in out/server/server.json)."""
    sites = contract.site_names
    if len(data) not in (1, len(sites)):
        raise InputError(f"--data: give one dataset for all sites or one per site ({len(sites)}), got {len(data)}")
    paths = [Path(p).resolve() for p in data] * (len(sites) if len(data) == 1 else 1)
    out = out.resolve()  # the record's bundle paths then hold from any folder
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, contract, out / "server")

    def settings(context: Context) -> tuple[Federation, str, Path, Path, bool]:
        k = int(context.node_config["partition-id"])
        return contract, sites[k], paths[k], out / "sites" / sites[k], True

    with _without_deprecation_notices():
        run_simulation(
            server_app=server,
            client_app=make_client_app(settings),
            num_supernodes=len(sites),
            backend_config={"client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0}},
        )
    record = out / "server" / "server.json"
    result = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {"status": "failed"}
    if result.get("status") != "finished":
        raise RuntimeError(f"{record}: the simulated federation did not finish ({result.get('error', 'no record')})")
    return result
