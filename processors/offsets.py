"""Exactly-once in effect, per input partition: the offset the state expects next. No I/O.

Kafka's committed offset cannot say which records the per-symbol state already holds: Faust
(0.15.x) can hand the agent record X+1 before X when a rebalance pauses the flow while X is being
delivered (X comes back only after the seek to the committed offset, when the state has moved past
it). So the processors keep, per `klines` partition, the offset of the next record the state must
take, and store it in the state table itself (processors/app.py): a marker key per partition, in
that partition's changelog, written after the states of the same group. It survives a crash with
the states and moves with the partition on a rebalance, because Faust recovers the changelog
partition together with the input partition.

For each record the gate answers:
  * PROCESS: the offset is the expected one; the state takes it and the expectation moves on;
  * REDELIVERY: the offset is below the expectation: the state already holds it (a restart or a
    rebalance delivered it again); skipped, no dead letter, the same signals already went out;
  * GAP: the offset is past the expectation: a record in between has not reached the state. It
    must not update the state (its predecessor would then be lost as "out of order"); the partition
    is sought back to the expected offset, and every record of it is skipped until that one comes.
A partition whose expected record does not come after `SEEK_ATTEMPTS` seeks stops the worker loudly
(the record is gone: retention, or a writer that is not idempotent), never a silent skip.
A partition can also go quiet with records left (the consumer's position moved past a record that a
rebalance took from the agent, and nothing later is left to reveal the gap): one behind its end offset
that took nothing for `STALL_S` is sought back the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

MARKER_PREFIX = b"\x00next-offset/"
PROCESS, REDELIVERY, GAP = "process", "redelivery", "gap"
SEEK_RETRY_S = 10.0     # a seek that brought nothing in this long is repeated
SEEK_ATTEMPTS = 6       # ... at most this many times; then the worker stops
STALL_S = 30.0          # a partition behind its end offset that took nothing for this long is sought back


def marker_key(partition: int) -> bytes:
    """The state-table key holding partition's expected next offset (no symbol starts with NUL)."""
    return MARKER_PREFIX + str(partition).encode()


def is_marker(key: bytes) -> bool:
    return key.startswith(MARKER_PREFIX)


def encode_offset(offset: int) -> bytes:
    return str(int(offset)).encode()


def decode_offset(blob: bytes) -> int:
    return int(blob)


class OffsetGapError(RuntimeError):
    """A partition's expected record never came back: the state cannot go on without it."""


@dataclass
class PendingSeek:
    offset: int          # where the partition was sought back to (the expected offset)
    since: float         # monotonic time of the last seek
    attempts: int = 0


class OffsetGate:
    """Per partition: the expected next offset, the group's not yet durable advances, pending seeks.

    `stored(partition)` reads the durable expectation (the state table), None when there is none;
    `start(partition, offset)` sets it for a partition that has none (its log start,
    never the committed offset, which can run past a record no state took): the caller does that before
    classifying the partition's records.
    """

    def __init__(self, stored: Callable[[int], Optional[int]]) -> None:
        self._stored = stored
        self.advanced: dict[int, int] = {}     # this group's expectations, durable after the group commit
        self.pending: dict[int, PendingSeek] = {}
        self.last_taken: dict[int, float] = {}  # monotonic time a partition last took a record (or was assigned)

    def expected(self, partition: int) -> Optional[int]:
        got = self.advanced.get(partition)
        return got if got is not None else self._stored(partition)

    def start(self, partition: int, offset: int) -> None:
        if self.expected(partition) is None:
            self.advanced[partition] = int(offset)

    def classify(self, partition: int, offset: int, now: float) -> str:
        expected = self.expected(partition)
        if expected is None:
            raise RuntimeError(f"OffsetGate: partition {partition} has no expected offset; start() it first")
        if offset == expected:
            self.advanced[partition] = offset + 1
            self.pending.pop(partition, None)
            self.last_taken[partition] = now
            return PROCESS
        if offset < expected:
            return REDELIVERY
        if partition not in self.pending:
            self.pending[partition] = PendingSeek(expected, now - SEEK_RETRY_S)   # due at once
        return GAP

    def seek_due(self, now: float) -> bool:
        """Some pending seek is due now (seeks_due would return it, or raise for it)."""
        return any(now - p.since >= SEEK_RETRY_S for p in self.pending.values())

    def postpone(self, now: float) -> None:
        """The broker does not answer: a seek now would bring nothing whatever the topic holds, so it
        proves no gap. No pending seek counts an attempt; each waits SEEK_RETRY_S from now, and the stall
        clocks restart (an outage is waited out, as the delivery is, up to SMC_DELIVERY_TIMEOUT_S)."""
        for p in self.pending.values():
            p.since = now
        for partition in self.last_taken:
            self.last_taken[partition] = now

    def seeks_due(self, now: float) -> list[tuple[int, int]]:
        """(partition, offset) to seek now; raises OffsetGapError for a partition out of attempts."""
        due = []
        for partition, p in self.pending.items():
            if now - p.since < SEEK_RETRY_S:
                continue
            if p.attempts >= SEEK_ATTEMPTS:
                raise OffsetGapError(
                    f"klines partition {partition}: offset {p.offset} did not come back after {p.attempts} seeks "
                    f"(every later record is held back); the record is gone from the topic or was never written")
            p.attempts += 1
            p.since = now
            due.append((partition, p.offset))
        return due

    def durable(self) -> dict[int, int]:
        """The group's expectations, to write after its states; clear them once stored."""
        return dict(self.advanced)

    def stored_now(self) -> None:
        self.advanced.clear()

    def check_stalled(self, partition: int, end_offset: int | None, now: float) -> bool:
        """A partition with records left that took none for STALL_S gets a seek back; True if it did."""
        expected = self.expected(partition)
        if expected is None or end_offset is None or end_offset <= expected or partition in self.pending:
            return False
        if now - self.last_taken.setdefault(partition, now) < STALL_S:
            return False
        self.pending[partition] = PendingSeek(expected, now - SEEK_RETRY_S)
        return True

    def assigned(self, partitions: set[int], now: float) -> None:
        """A rebalance: seeks of partitions gone elsewhere must not run (their new owner resumes from the
        stored expectation); those kept go on; every assigned partition gets STALL_S from now."""
        for partition in list(self.pending):
            if partition not in partitions:
                del self.pending[partition]
        for partition in partitions:
            self.last_taken[partition] = now
