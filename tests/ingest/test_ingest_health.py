"""The live ingest's /ready (ingest.health.StreamWatch): shards connected and their messages moving."""
from ingest.health import StreamWatch
from infra.probes import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def _figures(shards: dict, symbols: int = 100, fatal=None) -> dict:
    return {"symbols": symbols, "fatal": fatal, "produced": 42,
            "shard_detail": {sid: {"connected": c, "messages": m, "symbols": 50} for sid, (c, m) in shards.items()}}


def test_ready_while_every_shard_streams_and_not_when_one_goes_silent_or_down():
    clock = Clock()
    beat = Heartbeat(clock)
    watch = StreamWatch(quiet_s=60)
    p = watch.readiness(_figures({}, symbols=0), beat)
    assert not p.ok and "starting" in p.body["reason"]                   # the tick loop has not run yet
    beat.beat()
    p = watch.readiness(_figures({0: (True, 5), 1: (True, 9)}), beat)
    assert p.ok and p.body["reason"] == "streaming" and p.body["produced"] == 42
    for n in range(1, 4):                # shard 0 keeps moving, shard 1 stays at 9 messages
        clock.t += 25
        p = watch.readiness(_figures({0: (True, 5 + n), 1: (True, 9)}), beat)
    assert not p.ok and "shard(s) [1]: no message for 75 s" in p.body["reason"]
    assert p.body["shards"]["1"]["quiet_s"] == 75.0 and p.body["shards"]["0"]["quiet_s"] == 0.0
    assert watch.readiness(_figures({0: (True, 9), 1: (True, 10)}), beat).ok   # it moves again
    p = watch.readiness(_figures({0: (False, 9), 1: (True, 10)}), beat)
    assert not p.ok and "shard(s) [0] not connected" in p.body["reason"]
    assert watch.readiness(_figures({1: (True, 11)}), beat).ok           # shard 0 closed by a reconcile
    p = watch.readiness(_figures({1: (True, 12)}, fatal="a kline was not acknowledged"), beat)
    assert not p.ok and p.body["reason"].startswith("fatal: a kline")


def test_no_symbol_to_follow_is_nothing_to_do():
    clock = Clock()
    beat = Heartbeat(clock)
    beat.beat()
    clock.t += 1000
    assert StreamWatch(quiet_s=60).readiness(_figures({}, symbols=0), beat).ok
