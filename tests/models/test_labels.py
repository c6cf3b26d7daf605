"""Triple-barrier labels: entry at the next open, stop first when both are in one bar, fees, time-out."""
from __future__ import annotations

import numpy as np
import pytest

from models.labels import LabelConfig, intrabar, label_candidates

H = 3_600_000


def _series(rows):
    a = np.array(rows, dtype=np.float64)
    t = np.arange(len(a), dtype=np.int64) * H
    return t, a[:, 0], a[:, 1], a[:, 2]


def _label(rows, side, entry, stop, target, cfg=LabelConfig(horizon=3, taker_fee=0.0, slippage_bps=0.0), i=0):
    t, o, h, lo = _series(rows)
    return label_candidates(np.array([i]), np.array([side]), np.array([entry]), np.array([stop]), np.array([target]),
                            t, o, h, lo, H, cfg)


FLAT = (100.0, 100.5, 99.5)


def test_target_first_is_a_win_from_next_open():
    # bar 0 = signal bar; bar 1 opens 100 (fill), bar 2 reaches the target 104
    lab = _label([FLAT, (100, 101, 99), (101, 104.5, 100.5), FLAT, FLAT, FLAT], 1, 100, 98, 104)
    assert lab["valid"][0] and lab["reason"][0] == 1 and lab["label"][0] == 1
    assert lab["fill"][0] == 100 and lab["exit_price"][0] == 104
    assert lab["t1"][0] == 2 * H + H - 1 and lab["bars_held"][0] == 2
    assert lab["r"][0] == pytest.approx(2.0)


def test_both_levels_in_one_bar_counts_the_stop():
    lab = _label([FLAT, (100, 105, 97), FLAT, FLAT, FLAT, FLAT], 1, 100, 98, 104)
    assert lab["reason"][0] == -1 and lab["label"][0] == 0 and lab["exit_price"][0] == 98


def test_gap_through_stop_fills_at_open_short():
    # short: fill at 100; bar 2 opens above the stop (103) -> exit at the open 104
    lab = _label([FLAT, (100, 100.5, 99.5), (104, 105, 103.5), FLAT, FLAT, FLAT], -1, 100, 103, 94)
    assert lab["reason"][0] == -1 and lab["exit_price"][0] == 104 and lab["r"][0] == pytest.approx(-4 / 3)


def test_timeout_exits_at_following_open_and_fees_decide_the_label():
    rows = [FLAT, (100, 100.5, 99.5), (100, 100.5, 99.5), (100, 100.5, 99.5), (100.05, 100.1, 100), FLAT]
    no_fee = _label(rows, 1, 100, 98, 104)
    assert no_fee["reason"][0] == 0 and no_fee["exit_price"][0] == 100.05 and no_fee["label"][0] == 1
    assert no_fee["t1"][0] == 4 * H
    fees = _label(rows, 1, 100, 98, 104, LabelConfig(horizon=3, taker_fee=0.0005, slippage_bps=1.0))
    assert fees["pnl"][0] < 0 and fees["label"][0] == 0        # +0.05 % gross is eaten by 0.1 % fees + 2 bps


def test_incomplete_horizon_and_degenerate_setups_are_dropped():
    rows = [FLAT] * 4
    assert not _label(rows, 1, 100, 98, 104)["valid"][0]                    # needs bars 1..3 and the exit open at 4
    assert not _label([FLAT] * 6, 1, 100, 100, 100)["valid"][0]           # zero risk


def test_label_window_starts_after_the_signal_bar(small_dataset):
    ds = small_dataset
    assert (ds["t1"] > ds["t0"] + H - 1).all()                           # nothing before the next bar's open
    assert set(ds["label"].unique().to_list()) <= {0, 1}
    assert ((ds["pnl"] > 0).cast(int) == ds["label"].cast(int)).all()


def test_intrabar_matches_the_executor_rule():
    exits = pytest.importorskip("executor.exits")
    rng = np.random.default_rng(0)
    for _ in range(2000):
        o, a, b = rng.uniform(95, 105, 3)
        h, lo = max(o, a, b), min(o, a, b)
        for side in ("long", "short"):
            s = 1 if side == "long" else -1
            stop, tgt = (98.0, 104.0) if s > 0 else (102.0, 96.0)
            ref = exits.intrabar_exit(side, stop, tgt, o, h, lo)
            got = intrabar(s, stop, tgt, o, h, lo)
            assert (ref is None and got[0] == 0) or (ref == ({-1: "stop", 1: "target"}[got[0]], got[1]))
