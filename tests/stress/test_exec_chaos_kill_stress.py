"""Executor chaos with SIGKILLs at scale: ~1,000 orders (SMC_CHAOS_KILL_ORDERS), seeded random faults
and SMC_CHAOS_KILLS executor SIGKILLs (default 6), the same scenario and checks as
tests/executor/test_exec_chaos_kill.py (which runs a short version with the kafka tests).

    bash infra/bootstrap.sh stress -k chaos_kill
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_HELPERS = str(Path(__file__).resolve().parents[1] / "executor")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)
import exec_helpers  # noqa: E402,F401  (first: fixes tests/executor shadowing the executor package)

import pytest  # noqa: E402

from exec_helpers import fake  # noqa: E402,F401  (fixture)
from infra import kafka_io  # noqa: E402
from test_exec_chaos_kill import check, report, run_kill_chaos  # noqa: E402

ORDERS = int(os.environ.get("SMC_CHAOS_KILL_ORDERS", "1000"))
KILLS = int(os.environ.get("SMC_CHAOS_KILLS", "6"))


@pytest.mark.stress
@pytest.mark.kafka
@pytest.mark.parametrize("seed", [31])
def test_chaos_kill_1000_orders(settings, fake, tmp_path, seed):
    s = settings.with_(partitions=1)
    try:
        r = run_kill_chaos(s, fake, trades_per_symbol=max(1, ORDERS // 8), seed=seed, fault_rate=0.08, kills=KILLS,
                           log_dir=tmp_path, deadline_s=60 + ORDERS * 0.8)
        print("\n" + report(r))
        check(r)
    finally:
        kafka_io.delete_namespace(s)
