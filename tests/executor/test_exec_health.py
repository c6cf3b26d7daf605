"""The executor's /ready verdict (executor.health): its consumer loop goes round and trading is not halted."""
from executor.health import readiness
from executor.service import RunStats
from infra.probes import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_ready_only_while_the_loop_ticks_and_trading_is_not_halted():
    clock = Clock()
    beat = Heartbeat(clock)
    stats = RunStats(signals=7, batches=2)
    p = readiness(beat, 30, "", stats)
    assert not p.ok and "not started" in p.body["reason"]          # start-up: fencing, restoring state
    beat.beat()
    clock.t += 5
    p = readiness(beat, 30, "", stats)
    assert p.ok and p.body["signals"] == 7 and p.body["batches"] == 2 and p.body["beat_age_s"] == 5.0
    assert p.body["halted"] is None
    p = readiness(beat, 30, "reconciliation with the exchange failed: 503", stats)
    assert not p.ok and p.body["halted"].startswith("reconciliation") and "trading halted" in p.body["reason"]
    clock.t += 26                    # the loop stopped going round (a transaction hanging, a stuck poll)
    p = readiness(beat, 30, "", stats)
    assert not p.ok and "not gone round for 31 s" in p.body["reason"]
    beat.beat()
    assert readiness(beat, 30, "", stats).ok
