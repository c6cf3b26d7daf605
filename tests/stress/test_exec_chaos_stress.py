"""Executor chaos at scale: 1,000 orders per seed (SMC_CHAOS_ORDERS), seeded random faults, the same
scenario and checks as tests/executor/test_exec_chaos.py (which runs a short version by default).

    bash infra/bootstrap.sh stress -k chaos
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
from test_exec_chaos import check, report, run_chaos  # noqa: E402

ORDERS = int(os.environ.get("SMC_CHAOS_ORDERS", "1000"))


@pytest.mark.stress
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_1000_orders(fake, seed):
    r = run_chaos(fake, orders_target=ORDERS, seed=seed)
    print("\n" + report(r))
    check(r)
