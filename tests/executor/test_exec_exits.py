"""Exit rules at their boundaries (hand-computed)."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.exits import ExitRules, intrabar_exit, pnl_pct, time_exit

MIN = 60_000
OPEN = 1_700_000_000_000 - 1_700_000_000_000 % MIN   # a fill at a bar's open


@pytest.mark.parametrize("o,h,l,expected", [
    (100, 105, 96, None),                 # inside both levels
    (100, 111, 94, ("stop", 95)),         # both inside one bar: the worse one (stop) first
    (100, 110, 96, ("target", 110)),      # touching the target exactly triggers it
    (100, 105, 95, ("stop", 95)),         # touching the stop exactly triggers it
    (94, 99, 93, ("stop", 94)),           # gap through the stop: fill at the open
    (112, 115, 111, ("target", 112)),     # gap through the target: fill at the open
])
def test_intrabar_long(o, h, l, expected):
    assert intrabar_exit("long", 95.0, 110.0, o, h, l) == expected


@pytest.mark.parametrize("o,h,l,expected", [
    (100, 104, 91, None),
    (100, 106, 89, ("stop", 105)),
    (100, 104, 90, ("target", 90)),
    (106, 107, 100, ("stop", 106)),
    (88, 95, 87, ("target", 88)),
])
def test_intrabar_short(o, h, l, expected):
    assert intrabar_exit("short", 105.0, 90.0, o, h, l) == expected


def test_missing_levels_are_ignored():
    assert intrabar_exit("long", 0.0, 110.0, 100, 101, 50) is None
    assert intrabar_exit("long", 95.0, 0.0, 100, 500, 96) is None


def _end(minutes: float) -> int:
    """close_time of the bar whose end is `minutes` after the fill."""
    return OPEN + int(minutes * MIN) - 1


def test_stagnation_boundaries():
    # exactly 30 min held, |PnL| 0.09 % < 0.1 % -> close
    assert time_exit("long", 100.0, OPEN, _end(30), 100.09) == "stagnation"
    # 1 ms short of 30 min -> keep
    assert time_exit("long", 100.0, OPEN, _end(30) - 1, 100.09) is None
    # exactly 0.1 % (100.1 vs 100: 0.0009999999999990906 in floats) is NOT stagnation
    assert pnl_pct("long", 100.0, 100.1) == 0.001
    assert time_exit("long", 100.0, OPEN, _end(30), 100.1) is None
    assert time_exit("long", 100.0, OPEN, _end(30), 99.9) is None
    assert time_exit("short", 100.0, OPEN, _end(45), 100.05) == "stagnation"
    assert time_exit("short", 100.0, OPEN, _end(45), 99.85) is None


def test_max_hold_boundaries():
    assert time_exit("long", 100.0, OPEN, _end(120), 105.0) == "max_hold"
    assert time_exit("long", 100.0, OPEN, _end(120) - 1, 105.0) is None
    assert time_exit("short", 100.0, OPEN, _end(121), 90.0) == "max_hold"


def test_manual_flatten_and_custom_rules():
    assert time_exit("long", 100.0, OPEN, _end(1), 100.0, flatten=True) == "manual"
    rules = ExitRules(max_hold_ms=10 * MIN, stagnation_after_ms=5 * MIN, stagnation_pct=0.01)
    assert time_exit("long", 100.0, OPEN, _end(5), 100.99, rules) == "stagnation"
    assert time_exit("long", 100.0, OPEN, _end(10), 110.0, rules) == "max_hold"
