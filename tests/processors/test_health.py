"""The worker's health is progress against the end offsets, not a ticking timer (processors.health)."""
from processors.health import CATCHING_UP, OK, STALLED, UNKNOWN, ProgressWatch, lag


def _stats(positions, ends):
    return {"positions": {str(k): v for k, v in positions.items()}, "end_offsets": {str(k): v for k, v in ends.items()}}


def test_lag_is_what_is_left_per_partition():
    assert lag(_stats({0: 5, 1: 10}, {0: 7, 1: 10})) == 2
    assert lag(_stats({0: None}, {0: 3})) == 3
    assert lag(_stats({0: 1}, {0: None})) is None


def test_caught_up_catching_up_and_stalled():
    w = ProgressWatch(stall_s=60, file_stale_s=10)
    assert w.verdict(None, None, 0)[0] == UNKNOWN
    assert w.verdict(_stats({0: 10}, {0: 10}), 1, 0)[0] == OK
    assert w.verdict(_stats({0: 10}, {0: 50}), 1, 10)[0] == CATCHING_UP     # new records, position just seen
    assert w.verdict(_stats({0: 30}, {0: 50}), 1, 50)[0] == CATCHING_UP     # moved
    state, why = w.verdict(_stats({0: 30}, {0: 90}), 1, 111)                  # not moved for 61 s with work waiting
    assert state == STALLED and "no partition moved for 61 s" in why


def test_a_ticking_file_is_not_progress_and_a_stale_file_is_stuck():
    w = ProgressWatch(stall_s=5, file_stale_s=10)
    for t in range(0, 8):       # the file is fresh every time, the position never moves
        state, _ = w.verdict(_stats({0: 3}, {0: 9}), 0.5, float(t))
    assert state == STALLED
    assert w.verdict(_stats({0: 9}, {0: 9}), 31, 9.0)[0] == STALLED
