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


class Clock:
    """An injected monotonic clock: the test moves it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _worker(clock):
    from infra.probes import Heartbeat
    return ProgressWatch(stall_s=60, file_stale_s=10), Heartbeat(clock)


def _assigned(positions, ends):
    return {**_stats(positions, ends), "rebalances": 1, "partitions": len(ends)}


def test_readiness_caught_up_is_ready_and_says_why():
    from processors.health import readiness
    clock = Clock()
    watch, refreshed = _worker(clock)
    refreshed.beat()
    p = readiness(watch, _assigned({0: 10, 1: 4}, {0: 10, 1: 4}), refreshed)
    assert p.ok and p.body["state"] == OK and p.body["lag"] == 0
    assert p.body["positions"] == {"0": 10, "1": 4} and p.body["end_offsets"] == {"0": 10, "1": 4}
    clock.t += 500                    # idle for long, nothing to take: still ready
    refreshed.beat()
    p = readiness(watch, _assigned({0: 10, 1: 4}, {0: 10, 1: 4}), refreshed)
    assert p.ok and p.body["state"] == OK


def test_readiness_moving_is_ready_and_stalled_is_not():
    from processors.health import readiness
    clock = Clock()
    watch, refreshed = _worker(clock)
    for pos in (0, 100, 200, 300):   # records waiting, the position moves every 50 s: never stalled
        refreshed.beat()
        p = readiness(watch, _assigned({0: pos}, {0: 1000}), refreshed)
        assert p.ok and p.body["state"] == CATCHING_UP and p.body["lag"] == 1000 - pos
        clock.t += 50
    # then it stops with 700 records left (position 300 first seen at +150 s); the timer still refreshes
    refreshed.beat()
    assert readiness(watch, _assigned({0: 300}, {0: 1000}), refreshed).ok        # still for 50 s
    clock.t += 10
    refreshed.beat()
    assert readiness(watch, _assigned({0: 300}, {0: 1000}), refreshed).ok        # 60 s: the limit, not past it
    clock.t += 1
    refreshed.beat()
    p = readiness(watch, _assigned({0: 300}, {0: 1000}), refreshed)
    assert not p.ok and p.body["state"] == STALLED and p.body["lag"] == 700
    assert p.body["unmoved_s"] == 61.0 and p.body["stall_s"] == 60 and "no partition moved" in p.body["reason"]
    refreshed.beat()                 # it moves again: ready again
    assert readiness(watch, _assigned({0: 301}, {0: 1000}), refreshed).ok


def test_readiness_stale_stats_and_start_up_are_not_ready():
    from processors.health import readiness
    clock = Clock()
    watch, refreshed = _worker(clock)
    p = readiness(watch, _assigned({}, {}), refreshed)     # the stats timer has not run (tables recovering)
    assert not p.ok and p.body["state"] == UNKNOWN and "starting" in p.body["reason"]
    refreshed.beat()
    p = readiness(watch, {"positions": {}, "end_offsets": {}, "rebalances": 0}, refreshed)
    assert not p.ok and "no partition assignment" in p.body["reason"]
    assert readiness(watch, _assigned({}, {}), refreshed).ok          # assigned nothing: nothing to do
    assert not readiness(watch, _assigned({0: 3}, {0: None}), refreshed).ok   # end not known yet
    clock.t += 11                    # the timer stopped refreshing: the event loop is stuck
    p = readiness(watch, _assigned({0: 9}, {0: 9}), refreshed)
    assert not p.ok and p.body["state"] == STALLED and p.body["stats_age_s"] == 11.0


def test_liveness_follows_the_heartbeat_with_a_start_up_grace():
    from infra.probes import Heartbeat, liveness
    clock = Clock()
    beat = Heartbeat(clock)
    clock.t += 100                   # not in its loop yet, within the start-up grace
    p = liveness(beat, max_age_s=30, startup_s=300)
    assert p.ok and p.body["beats"] == 0 and "starting" in p.body["reason"]
    clock.t += 201
    assert not liveness(beat, 30, 300).ok
    beat.beat()
    clock.t += 30
    assert liveness(beat, 30, 300).ok
    clock.t += 0.5
    p = liveness(beat, 30, 300)
    assert not p.ok and p.body["beat_age_s"] == 30.5 and "not gone round for 30 s" in p.body["reason"]
