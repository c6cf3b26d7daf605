"""PositionWatch: ACCOUNT_UPDATE positions against the executor's, with a grace for in-flight fills."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

from executor.reconcile import PositionWatch


def test_a_position_closed_behind_the_executors_back_is_reported_after_the_grace():
    w = PositionWatch(grace_s=5.0)
    w.observe("BTCUSDT", 0.0, now=100.0)               # closed by hand on the exchange
    held = {"BTCUSDT": 0.02}
    assert w.drifted(held, now=104.9) == []           # an own fill may still be on its way
    assert w.drifted(held, now=105.0) == [("BTCUSDT", 0.0, 0.02)]
    assert w.drifted(held, now=200.0) == []           # reported once; the reconciliation takes over


def test_an_update_the_engine_catches_up_with_is_not_a_drift():
    w = PositionWatch(grace_s=5.0)
    w.observe("ETHUSDT", -0.5, now=10.0)               # our short entry's fill, pushed before the REST answer
    assert w.drifted({}, now=11.0) == []
    assert w.drifted({"ETHUSDT": -0.5}, now=12.0) == []
    assert w.pushed == {}                              # agreed: forgotten
    assert w.drifted({}, now=100.0) == []              # ... so a later close of ours is not reported from it


def test_a_position_opened_from_another_client_and_a_newer_update_replacing_an_older_one():
    w = PositionWatch(grace_s=2.0)
    w.observe("SOLUSDT", 3.0, now=0.0)
    w.observe("SOLUSDT", 5.0, now=1.5)                 # the newest amount counts, from when it arrived
    assert w.drifted({"SOLUSDT": 3.0}, now=3.0) == []
    assert w.drifted({"SOLUSDT": 3.0}, now=3.5) == [("SOLUSDT", 5.0, 3.0)]
