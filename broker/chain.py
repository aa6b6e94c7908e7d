"""The hash chain over policy decisions and audit events (DESIGN.md, "The decision log as
evidence").

Per org there are two chains, `decisions` and `audit`. A row's `chain` is the lowercase hex
SHA-256 of the previous row's `chain` (64 zeros for the first) followed by the row's
canonical JSON: every field of the row as `capgate decisions export --format jsonl` prints
it, except `chain`, keys sorted, no whitespace, UTF-8. `seq` counts 1, 2, 3, ... per chain.

This module is pure (no store): the writers call `link`, and `verify` checks any iterable
of rows, from the store or from an export file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
KINDS = ("decisions", "audit")
NO_ORG = ""  # the chain key of decision rows without an org (failed proxy authentication)


# One encoder, built once (json.dumps with options builds a new one on every call).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical(row: Mapping[str, Any]) -> bytes:
    """The row's canonical JSON: its fields except `chain`, sorted keys, no whitespace."""
    if "chain" in row:
        row = {k: v for k, v in row.items() if k != "chain"}
    return _ENCODE(row).encode()


def link(previous: str, row: Mapping[str, Any]) -> str:
    """The `chain` value of `row` when the chain's last value is `previous`."""
    return hashlib.sha256(previous.encode("ascii") + canonical(row)).hexdigest()


@dataclass(frozen=True)
class Head:
    """The last link of one chain: what the next row continues from."""

    seq: int = 0
    chain: str = GENESIS


@dataclass(frozen=True)
class ChainProblem:
    """The first row of a chain that does not verify, and what is wrong with it."""

    seq: int
    problem: str  # changed | removed | reordered | head_removed

    def __str__(self) -> str:
        if self.problem == "head_removed":
            return "its head record (chain_heads) was removed: rows after the last one may be"
        return f"row seq {self.seq} was {self.problem}"


@dataclass(frozen=True)
class ChainResult:
    rows: int
    problem: ChainProblem | None = None
    first_seq: int | None = None  # where the rows checked start (1 for a whole chain)
    last: Head | None = None  # the last link verified: worth keeping outside the store


def verify(
    rows: Iterable[Mapping[str, Any]],
    *,
    head: Head | None = None,
    anchored: bool = True,
    seq_exists: Callable[[int], bool] | None = None,
) -> ChainResult:
    """Recompute one chain over `rows` in storage (or file) order.

    `anchored`: the rows start at seq 1 (a whole chain from the store); otherwise (a file
    exported with --since) the first row is taken as given and the chain is checked from
    it on. `head`: the chain's recorded last link, to detect rows removed from the end.
    Stops at the first problem: a seq out of place is `reordered` when that seq appears
    elsewhere in the rows and `removed` when it does not; a hash mismatch is `changed`.
    `seq_exists` answers "is this seq anywhere in the chain?" (the store asks SQLite, so
    its rows can stream); without it the rows are held in memory to answer it.
    """
    if seq_exists is None:
        listed = list(rows)
        seqs = {row.get("seq") for row in listed}
        rows, seq_exists = listed, seqs.__contains__
    previous, expected, checked = GENESIS, 1, 0
    first_seq: int | None = None
    for index, row in enumerate(rows):
        seq = row.get("seq")
        if index == 0 and not anchored:
            if not isinstance(seq, int) or not isinstance(row.get("chain"), str):
                return ChainResult(0, ChainProblem(0, "changed"), None)
            first_seq, expected, previous = seq, seq + 1, row["chain"]
            checked = 1
            continue
        if first_seq is None:
            first_seq = expected
        if seq != expected:
            kind = "reordered" if seq_exists(expected) else "removed"
            return ChainResult(checked, ChainProblem(expected, kind), first_seq)
        if link(previous, row) != row.get("chain"):
            return ChainResult(checked, ChainProblem(expected, "changed"), first_seq)
        previous, expected, checked = row["chain"], expected + 1, checked + 1
    if head is not None and head.seq >= expected:
        return ChainResult(checked, ChainProblem(expected, "removed"), first_seq)
    if head is not None and head.seq < expected - 1:  # rows past the recorded head
        return ChainResult(checked, ChainProblem(head.seq + 1, "changed"), first_seq)
    if head is not None and head.seq > 0 and head.chain != previous:
        return ChainResult(checked, ChainProblem(head.seq, "changed"), first_seq)
    return ChainResult(checked, None, first_seq, Head(expected - 1, previous) if checked else None)
