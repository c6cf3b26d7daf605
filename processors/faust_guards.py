"""Guards around faust-streaming's consumer bookkeeping (0.15.x): no record dropped, no offset skipped.

Found with the two-worker take-over test (tests/processors/test_worker.py) and `DEVLOG=1` worker logs.
After a rebalance, a worker that gets a partition back (or takes one over) can carry a stale entry in
`Consumer._read_offset` for it: `_drain_messages` sets it for a record whose delivery straddled the
rebalance, after `on_partitions_revoked` had cleared it. Records re-fetched from the committed offset
are then below that stale read offset and are thrown away ("DROPPED MESSAGE ROFF" in the dev log),
never acked. Two things followed, both seen here in the rebalance-churn test:
  * a stall: nothing left to deliver, the commit stuck at the first dropped offset;
  * a silent loss: later records were acked, and `_new_offset` committed past the dropped ones
    (it only refuses when the first acked offset is more than one past the committed one, and not at
    all when nothing was committed yet; faust-streaming #606/#707 are the same family).
A stream that takes a record fetched in an older consumer generation, or while a rebalance has
stopped the flow, skips it and ACKS it anyway "so that lag does not grow" (faust/streams.py,
`_py_aiter`): the record never reached a processor, yet its offset counts as done and a commit can
move past it, so it would never be fetched again.
What the guards cannot fix, the offset gate does (processors/offsets.py): the drain loop can abandon
the delivery of record X when a rebalance suspends the flow (`wait_first(callback(message),
suspend_flow.wait())`) and deliver X+1, ... after the flow resumes; X comes again only with the seek
to the committed offset. The agent keeps, with the state, the offset each partition expects next: X+1
never reaches the state before X (it is held back and the partition sought back to X), and a record
the state already holds is skipped as a re-delivery.
The guards, applied once per process by `install()` before the Faust app starts:
  1. every fetched record is delivered: the read-offset filter is off (re-delivery is safe here: the
     offset gate skips a record the state already holds, the state never rewinds). The filter's
     other use, bridging offset gaps of transaction markers, is not needed: `klines` is written by
     idempotent, non-transactional producers only.
  2. a commit only ever covers a contiguous run of acked offsets starting at the committed offset.
  3. only a record a stream took in (`Message.tracked`) can be acked: a skipped one stays unacked, so
     the commit waits at it and the seek to the committed offset after the rebalance fetches it again.
The version range is pinned in pyproject.toml; `check_compatible()` refuses to run on a faust-streaming
whose internals these guards do not know.
"""
from __future__ import annotations

from typing import Optional

import faust
from faust.streams import Stream
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import Message

KNOWN_VERSIONS = ("0.15.",)


class _NoDropReadOffsets(dict):
    """`Consumer._read_offset` that still records what Faust writes, but never filters a fetched record.

    `_drain_messages` drops a record whose offset is below `_read_offset[tp]` and treats a jump above
    it as a gap to commit over; both decisions go wrong when the entry is stale, so the lookup used by
    that loop always answers "nothing read yet".
    """

    def __getitem__(self, tp: TP) -> None:  # noqa: D105 - see the class docstring
        return None


def check_compatible() -> None:
    if not faust.__version__.startswith(KNOWN_VERSIONS):
        raise RuntimeError(f"processors/faust_guards.py knows faust-streaming {KNOWN_VERSIONS}, "
                           f"found {faust.__version__}: re-check the guarded internals before upgrading")
    for name in ("_read_offset", "_acked", "_acked_index", "_committed_offset", "_new_offset"):
        if name not in Consumer.__annotations__ and not hasattr(Consumer, name):
            raise RuntimeError(f"faust Consumer has no {name}: the guards in processors/faust_guards.py do not apply")
    if "tracked" not in Message.__slots__:
        raise RuntimeError("faust Message has no `tracked`: guard 3 in processors/faust_guards.py does not apply")
    for name in ("_enable_passive", "add_processor", "wait", "ack"):   # processors/faust_batches.py
        if not hasattr(Stream, name):
            raise RuntimeError(f"faust Stream has no {name}: processors/faust_batches.ReadyBatches does not apply")


def contiguous_commit_offset(acked: list[int], committed: Optional[int]) -> tuple[Optional[int], int]:
    """(offset to commit, how many acked offsets it consumes) for sorted `acked` offsets.

    `committed` is the next offset to read (Kafka's convention, and Faust's `_committed_offset`); a run
    that does not start there would commit over a record nobody acked, so it commits nothing.
    """
    if not acked or (committed is not None and acked[0] != committed):
        return None, 0
    n = 1
    while n < len(acked) and acked[n] == acked[n - 1] + 1:
        n += 1
    return acked[n - 1] + 1, n


def _new_offset(self: Consumer, tp: TP) -> Optional[int]:
    acked = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    committed = self._committed_offset[tp]
    # Faust stores "never committed" as None and also maps a committed 0 to None
    offset, n = contiguous_commit_offset(acked, committed if committed else None)
    if offset is None:
        return None
    batch = acked[:n]
    del acked[:n]
    self._acked_index[tp].difference_update(batch)
    return offset


_faust_ack = Consumer.ack


def _ack(self: Consumer, message: Message) -> bool:
    if not message.tracked:    # no stream took it in: Faust acks what its streams skip (guard 3)
        return False
    return _faust_ack(self, message)


def install() -> None:
    """Apply the guards to faust's Consumer class (idempotent)."""
    if Consumer._new_offset is _new_offset:
        return
    check_compatible()
    original_init = Consumer.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._read_offset = _NoDropReadOffsets()

    Consumer.__init__ = __init__
    Consumer._new_offset = _new_offset
    Consumer.ack = _ack
