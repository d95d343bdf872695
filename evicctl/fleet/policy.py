"""Which shared-tier objects the leader evicts: a pure function of the ledger, the fleet's
access rates and the cluster's fill.

Above `high` of capacity the leader evicts down to `low` (Mooncake's watermark scheme: a
margin, so evictions come in batches rather than one per write). The order is the fleet's
access rate per byte, lowest first: the summed rate of every live manager that serves the
context (a context one engine never reads but two others read often stays), divided by its
size, the greedy of the paper's knapsack with the remote tier's TTFT taken as equal for all.
Ties go to the oldest object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

HIGH_WATERMARK = 0.9
LOW_WATERMARK = 0.8


@dataclass(frozen=True)
class SharedObject:
    key: str  # the object's key (the ledger's row)
    context_id: str
    nbytes: int
    stored_at_ms: int


def fleet_rates(contexts_by_manager: Mapping[str, list[dict]]) -> dict[str, float]:
    """context id -> accesses per second summed over managers (their published `freq`)."""
    rates: dict[str, float] = {}
    for rows in contexts_by_manager.values():
        for row in rows:
            rates[row["id"]] = rates.get(row["id"], 0.0) + float(row.get("freq") or 0.0)
    return rates


def choose_evictions(objects: list[SharedObject], rates: Mapping[str, float], *, capacity_bytes: int,
                     used_bytes: int, high: float = HIGH_WATERMARK, low: float = LOW_WATERMARK) -> list[SharedObject]:  # fmt: skip
    """The objects to evict, in order, so used falls to `low` of capacity; [] below `high`."""
    if capacity_bytes <= 0 or used_bytes <= high * capacity_bytes:
        return []
    excess = used_bytes - low * capacity_bytes
    order = sorted(objects, key=lambda o: (rates.get(o.context_id, 0.0) / max(o.nbytes, 1), o.stored_at_ms))
    chosen = []
    for obj in order:
        if excess <= 0:
            break
        chosen.append(obj)
        excess -= obj.nbytes
    return chosen
