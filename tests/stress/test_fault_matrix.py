"""The fault matrix: each scenario repeated SMC_STRESS_N times (default 20) on the real broker, with
lost / duplicated / wrong records counted (ingest: bars against what the fake exchange holds;
processors: signals against the uninterrupted in-process core, tests/processors/scenarios.py;
executor: orders and positions against the fake exchange, tests/executor/test_exec_chaos_kill.py), and a
table printed.

    bash infra/bootstrap.sh stress                 # every scenario, 20 repetitions (a few hours)
    SMC_STRESS_N=5 bash infra/bootstrap.sh stress -k "restart or SIGKILL"

Not part of the default test run (marker `stress`); the default suite runs each scenario once
(tests/ingest/test_ingest_faults.py, tests/processors/test_worker*.py). A repetition that raises
counts as a failure and is shown.
"""
from __future__ import annotations

import os
import random
import time
import uuid

import pytest

from scenarios import (OwnBroker, scenario_broker_outage, scenario_broker_outage_past_timeout, scenario_crash_between_flushes,
                       scenario_poison, scenario_two_workers_churn, scenario_worker_sigkill)
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
    print("\nfault matrix                                runs  lost  duplicated  wrong  failed  s/run")
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
    # the processors: signals against the uninterrupted core (re-sent identical copies are not counted:
    # consumers keep one per signal_id; tests/processors/scenarios.py)
    "worker SIGKILL at a random moment": lambda s, i: _processors(s, scenario_worker_sigkill, _RNG.uniform(0.02, 0.45)),
    "two workers on a fresh namespace, churn": lambda s, i: _processors(s, scenario_two_workers_churn),
    "poison records among valid ones": lambda s, i: _processors(s, scenario_poison, i),
    "broker kill -9 for 2 min while processing": lambda s, i: _on_own_broker(s, scenario_broker_outage, 120.0),
    "broker down past the delivery timeout": lambda s, i: _on_own_broker(s, scenario_broker_outage_past_timeout),
    "worker dies between a group's two flushes": lambda s, i: _processors(s, scenario_crash_between_flushes,
                                                                          _RNG.uniform(0.2, 0.7)),
    # the executor: orders against the fake exchange (lost = executed there, unknown to the executor;
    # duplicated = a client id executed or placed twice; wrong = a position that differs, an order the
    # executor records that never executed, a stop missing past the bound)
    "executor SIGKILLs amid exchange faults": lambda s, i: _executor_kills(s, 100 + i),
    # two whole main jobs at once on one broker and one chDB path: lost = klines or signals missing, duplicated =
    # a second copy of a signal row, wrong = a signal that differs from the same symbols run alone in process
    "two `smc run` at once, one broker, one chDB": lambda s, i: _two_runs(s),
}


def _two_runs(settings) -> tuple[int, int, int]:
    import tempfile
    from pathlib import Path
    from tests.pipeline.test_isolated_runs import lost_doubled_wrong, run_two_at_once
    return lost_doubled_wrong(run_two_at_once(settings.kafka_bootstrap, Path(tempfile.mkdtemp(prefix="smc-stress-runs-")),
                                              uuid.uuid4().hex[:8]))


def _executor_kills(settings, seed: int) -> tuple[int, int, int]:
    import sys
    import tempfile
    from pathlib import Path
    helpers = str(Path(__file__).resolve().parents[1] / "executor")
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    import exec_helpers  # noqa: F401  (first: keeps tests/executor from shadowing the executor package)
    from exec_helpers import KEY, SECRET
    from infra import kafka_io
    from test_exec_chaos_kill import report, run_kill_chaos
    from tests.fakes.fake_binance_trading import FakeBinanceTrading
    s = settings.with_(partitions=1)
    fake = FakeBinanceTrading(KEY, SECRET)
    fake.start()
    try:
        r = run_kill_chaos(s, fake, trades_per_symbol=16, seed=seed, fault_rate=0.12, kills=3,
                           log_dir=Path(tempfile.mkdtemp(prefix="smc-stress-exec-")), deadline_s=150)
    finally:
        fake.stop()
        kafka_io.delete_namespace(s)
    if not r["done"] or r["unexpected"]:
        raise AssertionError(report(r)[:300])
    ex, ours = r["exchange_positions"], r["executor_positions"]
    wrong = sum(1 for k in set(ex) | set(ours) if ex.get(k) != ours.get(k)) + len(r["recorded_not_executed"]) \
        + (r["naked_max_s"] > r["bound_s"])
    return len(r["executed_not_recorded"]), len(r["duplicates"]), wrong


def _processors(settings, scenario, *args):
    from infra import kafka_io
    s = settings.with_(interval="1h")
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    try:
        return scenario(s, *args).counts
    finally:
        kafka_io.delete_namespace(s)


_BROKER: list = []


def _on_own_broker(settings, scenario, *args):
    import tempfile
    from pathlib import Path
    if not _BROKER:
        _BROKER.append(OwnBroker(Path(tempfile.mkdtemp(prefix="smc-stress-kafka-"))))
    return scenario(_BROKER[0], settings, *args).counts


@pytest.fixture(scope="module", autouse=True)
def _stop_own_broker():
    yield
    while _BROKER:
        _BROKER.pop().stop()


@pytest.mark.stress
@pytest.mark.kafka
@pytest.mark.timeout(0)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_matrix(settings, name):
    _repeat(name, settings, SCENARIOS[name])
