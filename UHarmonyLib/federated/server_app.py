"""The Flower ServerApp: rounds with a stock Flower strategy, then the publish-and-finish exchange.

The server sees only what sites send: the shared tensors of each round, and at the end
each site's gate-bank summary vectors plus the rows of sites that publish. It records
the name of every tensor it received (`server.json`) and stores the final shared
backbone (`shared.safetensors`) in the run config's `server-out` folder, so what left
the sites can be audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Strategy,
)
from safetensors.torch import save_file

from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.split import shared_state
from UHarmonyLib.federated.wire import ROWS_PREFIX, bank_record, merge_banks, read_bank, record_number
from UHarmonyLib.files.atomic import atomic_path, write_text_atomic

app = ServerApp()
BASES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedavgm": FedAvgM}


class RoundLog:
    """What the server received and when; rewritten after every exchange."""

    def __init__(self, out: Path, contract: Federation) -> None:
        self.out = out
        self.contract = contract
        self.data: dict[str, Any] = {
            "contract": contract.to_run_config(),
            "rounds": [],
            "received": {},
            "status": "running",
        }
        self.started = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()

    def received(self, phase: str, replies: list[Message], need: int) -> list[Message]:
        """Record the tensor names of the valid replies; refuse a phase with too few sites."""
        valid = [m for m in replies if m.has_content()]
        self.data["received"][phase] = [
            {
                "node": m.metadata.src_node_id,
                "site": str(m.content["site"]["name"]) if "site" in m.content.config_records else None,
                "tensors": {key: sorted(rec) for key, rec in m.content.array_records.items()},
            }
            for m in valid
        ]
        if len(valid) < need:
            errors = "; ".join(m.error.reason or f"error {m.error.code}" for m in replies if m.has_error())[:300]
            self.fail(
                f"{phase}: {len(valid)} of the {need} required sites replied" + (f" ({errors})" if errors else "")
            )
        self.save()
        return valid

    def round_done(self, server_round: int, replies: int) -> None:
        seconds = round(time.perf_counter() - self.started, 2)
        self.data["rounds"].append({"round": server_round, "sites": replies, "seconds": seconds})
        self.save()

    def evaluated(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Record each site's whole-lesion Dice of the round's model on its own validation cases (None: no
        cases or no lesion); returns the replies with a Dice, the ones Flower's weighted mean may average."""
        dice: dict[str, float | None] = {}
        scored = []
        for m in replies:
            value = record_number(m.content.metric_records["metrics"], "dice-whole-lesion")
            dice[str(m.content["site"]["name"])] = None if value < 0 else round(value, 4)
            scored += [m] if value >= 0 else []
        self.data.setdefault("evaluations", []).append({"round": server_round, "dice_whole_lesion": dice})
        self.save()
        return scored

    def fail(self, reason: str) -> None:
        self.data["status"] = "failed"
        self.data["error"] = reason
        self.save()
        raise RuntimeError(reason)

    def save(self) -> None:
        write_text_atomic(self.out / "server.json", json.dumps(self.data, indent=2) + "\n")


def make_strategy(contract: Federation, log: RoundLog, dp_noise: float = 0.0, dp_clip: float = 0.0) -> Strategy:
    """A stock Flower strategy that logs what it receives (and adds server-side DP when asked)."""
    need = contract.required_sites
    kwargs: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0 if contract.eval_every else 0.0,  # else sites validate once, on their own bundle
        "min_train_nodes": need,
        "min_evaluate_nodes": need if contract.eval_every else 0,
        "min_available_nodes": need,
    }
    if contract.strategy == "fedprox":
        kwargs["proximal_mu"] = contract.proximal_mu
    if contract.strategy == "fedadam":
        kwargs.update(eta=1e-2, eta_l=contract.lr, tau=1e-3)
    if contract.strategy == "fedavgm":
        kwargs.update(server_learning_rate=1.0, server_momentum=contract.server_momentum)

    base: type[FedAvg] = BASES[contract.strategy]

    class Logged(base):  # type: ignore[misc,valid-type]  # the base class is the contract's, chosen at run time
        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            log.start()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            valid = log.received(f"round {server_round}", list(replies), need)
            result = super().aggregate_train(server_round, valid)
            log.round_done(server_round, len(valid))
            return result

        def configure_evaluate(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            if not contract.evaluates(server_round):
                return []
            return super().configure_evaluate(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            if not contract.evaluates(server_round):  # Flower calls this after every round, asked or not
                return None
            valid = log.received(f"evaluate {server_round}", list(replies), need)
            scored = log.evaluated(server_round, valid)
            return super().aggregate_evaluate(server_round, scored) if scored else None

    strategy: Strategy = Logged(**kwargs)
    if dp_noise > 0:
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, dp_noise, dp_clip, len(contract.site_names))
    return strategy


def _exchange(grid: Grid, nodes: list[int], kind: str, records: dict[str, Any], timeout: float) -> list[Message]:
    """The same records to every node (one RecordDict per message), and their replies."""
    messages = [Message(content=RecordDict(dict(records)), dst_node_id=n, message_type=kind) for n in nodes]
    return list(grid.send_and_receive(messages, timeout=timeout))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """A deployed run: everything from the run config that `uharmony federated server` sent."""
    run = context.run_config
    if "server-out" not in run:
        raise ValueError("run config lacks server-out: start the run with `uharmony federated server`")
    contract = Federation.from_run_config(dict(run))
    serve(grid, contract, Path(str(run["server-out"])), float(run.get("dp-noise", 0.0)), float(run.get("dp-clip", 0.0)))


def serve(grid: Grid, contract: Federation, out: Path, dp_noise: float = 0.0, dp_clip: float = 0.0) -> dict[str, Any]:
    """The whole federation from the server's side; returns the record also written to out/server.json."""
    out.mkdir(parents=True, exist_ok=True)
    log = RoundLog(out, contract)
    log.save()
    strategy = make_strategy(contract, log, dp_noise, dp_clip)
    initial = ArrayRecord(shared_state(contract.network()))
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=contract.rounds,
        timeout=contract.round_timeout,
        train_config=ConfigRecord({"num-rounds": contract.rounds}),
    )
    final = result.arrays
    with atomic_path(out / "shared.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in final.to_torch_state_dict().items()}, str(tmp))

    nodes = list(grid.get_node_ids())
    need = contract.required_sites
    published = log.received("publish", _exchange(grid, nodes, "query.publish", {}, contract.round_timeout), need)
    names = {m.metadata.src_node_id: str(m.content["site"]["name"]) for m in published}
    banks = [read_bank(m.content.array_records["bank"]) for m in published]
    finish: dict[str, Any] = {"arrays": final, "bank": bank_record(merge_banks(banks))}
    for m in published:
        if bool(m.content["site"]["publish"]):
            finish[ROWS_PREFIX + names[m.metadata.src_node_id]] = m.content["rows"]
    done = log.received("finish", _exchange(grid, list(names), "query.finish", finish, contract.round_timeout), need)
    log.data["bundles"] = {str(m.content["bundle"]["site"]): str(m.content["bundle"]["path"]) for m in done}
    log.data["dice_whole_lesion"] = {
        str(m.content["bundle"]["site"]): record_number(m.content.metric_records["metrics"], "dice-whole-lesion")
        for m in done
    }
    log.data["status"] = "finished"
    log.save()
    return log.data
