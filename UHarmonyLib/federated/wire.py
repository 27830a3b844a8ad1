"""How gate banks and published rows travel in Flower records (ArrayRecords of named tensors)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from UHarmonyLib.model.signature_bank import SignatureBank

ROWS_PREFIX = "rows."


def record_number(record: ConfigRecord | MetricRecord, key: str, default: float | None = None) -> float:
    """A numeric entry of a config or metric record (`default` when absent); refuses lists, text and bytes."""
    value = record.get(key, default)
    if not isinstance(value, (int, float)):
        raise ValueError(f"record entry {key!r} is not a number: {value!r}")
    return float(value)


def bank_record(bank: SignatureBank) -> ArrayRecord:
    return ArrayRecord(
        {
            "vectors": bank.vectors.float().contiguous(),
            "sites": bank.sites.long().contiguous(),
            "cases": bank.cases.long().contiguous(),
            "weights": bank.weights.float().contiguous(),
        }
    )


def read_bank(record: ArrayRecord) -> SignatureBank:
    t = record.to_torch_state_dict()
    return SignatureBank(t["vectors"].float(), t["sites"].long(), t["cases"].long(), t["weights"].float())


def merge_banks(banks: list[SignatureBank]) -> SignatureBank:
    """One bank from every site's, case numbers kept distinct (the calibration leaves cases out by number)."""
    offsets, total = [], 0
    for b in banks:
        offsets.append(total)
        total += int(b.cases.max()) + 1 if len(b.cases) else 0
    return SignatureBank(
        torch.cat([b.vectors for b in banks]),
        torch.cat([b.sites for b in banks]),
        torch.cat([b.cases + o for b, o in zip(banks, offsets)]),
        torch.cat([b.weights for b in banks]),
    )


def published_rows(content: RecordDict) -> dict[str, dict[str, torch.Tensor]]:
    """Site name -> its published rows, from the `rows.<site>` records of a message."""
    return {
        key[len(ROWS_PREFIX) :]: record.to_torch_state_dict()
        for key, record in content.array_records.items()
        if key.startswith(ROWS_PREFIX)
    }
