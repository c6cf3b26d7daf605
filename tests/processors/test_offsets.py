"""The offset gate: each record of a partition reaches the state once, in offset order (processors.offsets)."""
from __future__ import annotations

import random

import pytest

from processors.offsets import (GAP, PROCESS, REDELIVERY, SEEK_ATTEMPTS, SEEK_RETRY_S, STALL_S, OffsetGapError, OffsetGate,
                                decode_offset, encode_offset, is_marker, marker_key)


def test_in_order_records_are_processed_and_move_the_expectation():
    gate = OffsetGate(lambda p: None)
    gate.start(0, 5)
    assert [gate.classify(0, o, 0.0) for o in (5, 6, 7)] == [PROCESS] * 3
    assert gate.expected(0) == 8 and gate.durable() == {0: 8}


def test_redelivery_is_skipped_and_a_gap_holds_back_until_the_missing_record_comes():
    stored = {0: 10}
    gate = OffsetGate(stored.get)
    assert gate.classify(0, 9, 0.0) == REDELIVERY          # the state holds it
    assert gate.classify(0, 11, 0.0) == GAP                # 10 has not come: 11 must not update the state
    assert gate.classify(0, 12, 0.0) == GAP
    assert gate.seeks_due(0.0) == [(0, 10)]                 # seek back at once
    assert gate.seeks_due(1.0) == []                        # not again before SEEK_RETRY_S
    assert [gate.classify(0, o, 2.0) for o in (11, 10, 11, 12)] == [GAP, PROCESS, PROCESS, PROCESS]
    assert not gate.pending and gate.expected(0) == 13


def test_partitions_are_independent_and_the_durable_expectation_is_read_after_storing():
    stored: dict[int, int] = {}
    gate = OffsetGate(stored.get)
    gate.start(0, 0)
    gate.start(1, 100)
    gate.start(1, 7)                                        # has one already: unchanged
    assert gate.classify(0, 0, 0.0) == PROCESS and gate.classify(1, 100, 0.0) == PROCESS
    stored.update(gate.durable())
    gate.stored_now()
    assert gate.expected(0) == 1 and gate.expected(1) == 101 and gate.durable() == {}


def test_a_record_that_never_comes_back_stops_the_worker_after_bounded_seeks():
    gate = OffsetGate({3: 50}.get)
    assert gate.classify(3, 52, 0.0) == GAP
    t = 0.0
    for _ in range(SEEK_ATTEMPTS):
        assert gate.seeks_due(t) == [(3, 50)]
        t += SEEK_RETRY_S
    with pytest.raises(OffsetGapError, match="partition 3: offset 50 did not come back"):
        gate.seeks_due(t)


def test_a_rebalance_drops_the_seeks_of_partitions_gone_and_keeps_the_others():
    gate = OffsetGate({0: 1, 1: 1}.get)
    assert gate.classify(0, 4, 0.0) == GAP and gate.classify(1, 4, 0.0) == GAP
    gate.assigned({1}, 0.0)
    assert gate.seeks_due(100.0) == [(1, 1)]


def test_a_quiet_partition_with_records_left_is_sought_back():
    gate = OffsetGate({0: 10}.get)
    gate.assigned({0}, 0.0)
    assert not gate.check_stalled(0, 10, 100.0)             # nothing left: quiet is fine
    assert not gate.check_stalled(0, 15, STALL_S - 1)       # records left, not for long yet
    assert gate.check_stalled(0, 15, STALL_S + 1)
    assert gate.seeks_due(STALL_S + 1) == [(0, 10)]
    assert gate.classify(0, 10, STALL_S + 2) == PROCESS and not gate.pending
    assert not gate.check_stalled(0, 15, STALL_S + 3)       # it took one just now


def test_unstarted_partition_is_an_error_not_a_guess():
    with pytest.raises(RuntimeError, match="partition 2 has no expected offset"):
        OffsetGate(lambda p: None).classify(2, 0, 0.0)


def test_any_delivery_order_gives_each_offset_once_in_order():
    """Random interleavings of re-deliveries, reorderings and seeks: the state takes 0..N-1 exactly once."""
    rng = random.Random(13)
    for _ in range(200):
        gate = OffsetGate(lambda p: None)
        gate.start(0, 0)
        taken, n = [], 60
        queue = list(range(n))
        while len(taken) < n:
            # deliver a shuffled window, with duplicates of old offsets mixed in
            head = queue[:8]
            rng.shuffle(head)
            extra = [rng.randrange(0, max(1, gate.expected(0))) for _ in range(rng.randrange(3))]
            for o in head + extra:
                if gate.classify(0, o, 0.0) == PROCESS:
                    taken.append(o)
            # a seek back re-delivers from the expected offset
            queue = list(range(gate.expected(0), n))
        assert taken == list(range(n))


def test_marker_keys_are_not_symbols():
    assert is_marker(marker_key(4)) and not is_marker(b"BTCUSDT")
    assert decode_offset(encode_offset(123456789)) == 123456789


def test_seeks_while_the_broker_does_not_answer_count_no_attempt():
    """During a broker outage a seek brings nothing whatever the topic holds: the worker postpones (the
    2-min kill -9 stress scenario stopped every worker after 6 such seeks), and the gate still stops it
    after SEEK_ATTEMPTS seeks once the broker answers and the record stays away."""
    gate = OffsetGate({0: 10}.get)
    gate.assigned({0}, 0.0)
    assert gate.check_stalled(0, 15, STALL_S + 1)                    # quiet with records left
    t = STALL_S + 1
    assert gate.seek_due(t)
    for _ in range(3 * SEEK_ATTEMPTS):                               # a long outage: postponed each time
        gate.postpone(t)
        assert not gate.seek_due(t + SEEK_RETRY_S - 0.1)
        t += SEEK_RETRY_S
        assert gate.seek_due(t)
    assert not gate.check_stalled(0, 15, t)                          # still the one pending seek
    for _ in range(SEEK_ATTEMPTS):                                   # the broker is back
        assert gate.seeks_due(t) == [(0, 10)]
        t += SEEK_RETRY_S
    with pytest.raises(OffsetGapError):
        gate.seeks_due(t)
