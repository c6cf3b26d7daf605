"""The fault matrix: each scenario repeated SMC_STRESS_N times (default 20) on the real broker, with
lost / duplicated / wrong records counted against what the fake exchange holds, and a table printed.

    bash infra/bootstrap.sh stress                 # every scenario, 20 repetitions
    SMC_STRESS_N=5 bash infra/bootstrap.sh stress -k restart

Not part of the default test run (marker `stress`); the default suite runs each scenario once
(tests/ingest/test_ingest_faults.py). A repetition that raises counts as a failure and is shown.
"""
from __future__ import annotations

import os
import random
import time
import uuid

import pytest

from test_ingest_faults import (scenario_rest_bans, scenario_restart_after_downtime, scenario_unacknowledged_klines,
                                scenario_vanishing_universe)

N = int(os.environ.get("SMC_STRESS_N", "20"))
RESULTS: dict[str, list] = {}


def _repeat(name, base_settings, scenario):
    rows = RESULTS.setdefault(name, [])
    for i in range(N):
        s = base_settings.with_(namespace=f"st{uuid.uuid4().hex[:10]}")
        t0 = time.monotonic()
        try:
            lost, dup, wrong = scenario(s, i)
            rows.append((lost, dup, wrong, None, time.monotonic() - t0))
        except Exception as exc:                                  # a failed repetition is a result too
            rows.append((0, 0, 0, f"{type(exc).__name__}: {exc}"[:160], time.monotonic() - t0))
        print(f"  {name} #{i + 1}/{N}: {rows[-1]}", flush=True)
    _print_table()
    bad = [r for r in rows if r[:3] != (0, 0, 0) or r[3]]
    assert not bad, f"{name}: {len(bad)} of {N} repetitions lost, doubled or failed: {bad[:3]}"


def _print_table():
    print("\nfault matrix (ingest)                       runs  lost  duplicated  wrong  failed  s/run")
    for name, rows in RESULTS.items():
        failed = sum(1 for r in rows if r[3])
        print(f"  {name:<42} {len(rows):>4} {sum(r[0] for r in rows):>5} {sum(r[1] for r in rows):>11} "
              f"{sum(r[2] for r in rows):>6} {failed:>7} {sum(r[4] for r in rows) / len(rows):>6.1f}")


_RNG = random.Random(20)
SCENARIOS = {
    "exchangeInfo empty/unparsable/shrunken": lambda s, i: scenario_vanishing_universe(s),
    "ingest restart after 1-6 min down": lambda s, i: scenario_restart_after_downtime(s, _RNG.randint(1, 6)),
    "exchangeInfo 429/418 (Retry-After)": lambda s, i: scenario_rest_bans(s),
    "broker never acknowledges -> exit, restart": lambda s, i: scenario_unacknowledged_klines(s),
}


@pytest.mark.stress
@pytest.mark.kafka
@pytest.mark.timeout(0)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_matrix(settings, name):
    _repeat(name, settings, SCENARIOS[name])
