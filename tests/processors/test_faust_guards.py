"""The commit rule and the read-offset map of processors/faust_guards.py, in isolation.

The stale read offset they guard against showed up in tests/processors/test_worker.py's rebalance-churn
scenario (test_take_over_in_the_middle_of_rebalances), traced with DEVLOG=1 worker logs.
"""
from __future__ import annotations

import faust
import pytest

from processors import faust_guards
from processors.faust_guards import _NoDropReadOffsets, contiguous_commit_offset


@pytest.mark.parametrize("acked, committed, want", [
    ([], 10, (None, 0)),
    ([10, 11, 12], 10, (13, 3)),
    ([10, 11, 13, 14], 10, (12, 2)),          # stops at the first hole
    ([11, 12], 10, (None, 0)),                # 10 was never acked: faust 0.15 committed 13 here (off by one)
    ([1832, 1833], 1333, (None, 0)),          # the take-over loss: acked far past the committed offset
    ([0, 1, 2], None, (3, 3)),                # nothing committed yet: the first run counts
    ([7], 7, (8, 1)),
])
def test_commit_covers_only_a_contiguous_run_from_the_committed_offset(acked, committed, want):
    assert contiguous_commit_offset(acked, committed) == want


def test_read_offsets_are_recorded_but_never_filter():
    offsets = _NoDropReadOffsets()
    offsets["tp"] = 1831                     # Faust still writes it (seek, drain loop)
    assert offsets["tp"] is None              # ... but the drain loop's lookup never drops a record
    assert offsets.pop("tp", None) == 1831    # revocation cleanup keeps working
    offsets.update({"tp": 5})
    assert "tp" in offsets.keys()


def test_install_patches_the_consumer_once_and_knows_the_version():
    from faust.transport.consumer import Consumer
    faust_guards.install()
    faust_guards.install()
    assert Consumer._new_offset is faust_guards._new_offset
    assert Consumer.ack is faust_guards._ack
    assert faust.__version__.startswith(faust_guards.KNOWN_VERSIONS)


class _Topics:
    @staticmethod
    def acks_enabled_for(topic: str) -> bool:
        return True


class _App:
    topics = _Topics()


class _Consumer:
    """What Consumer.ack touches, with Faust's own bookkeeping types."""

    def __init__(self) -> None:
        import collections
        self.app = _App()
        self._committed_offset = collections.defaultdict(lambda: None)
        self._acked_index = collections.defaultdict(set)
        self._acked = collections.defaultdict(list)
        self._unacked_messages = set()
        self._n_acked = 0
        self._waiting_for_ack = None


def _message(offset: int, tracked: bool):
    from faust.types.tuples import ConsumerMessage        # what the consumer builds from a fetched record
    m = ConsumerMessage("klines", 0, offset, 0.0, 0, None, b"k", b"v", None)
    assert m.tracked is False                             # set by a stream when it takes the record in
    m.tracked = tracked
    return m


def test_a_record_no_stream_took_in_is_never_acked():
    """Faust's streams ack the records they skip (older generation, flow stopped by a rebalance); those
    never reached a processor, so their offsets must not become committable (guard 3)."""
    c = _Consumer()
    skipped, taken = _message(41, tracked=False), _message(42, tracked=True)
    assert faust_guards._ack(c, skipped) is False and not skipped.acked
    assert faust_guards._ack(c, taken) is True and taken.acked
    assert c._acked[skipped.tp] == [42]
    # the commit then waits at 41 (committed offset) until 41 is fetched again and processed
    assert contiguous_commit_offset(sorted(c._acked[skipped.tp]), 41) == (None, 0)
