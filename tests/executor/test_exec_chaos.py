"""Chaos: many orders against the fake exchange with seeded random faults (rejections with real error
bodies, 5xx with and without execution, execution after the client timed out, answers lost after
acceptance, 429), stops and targets fired at the exchange, positions opened behind the executor's
back, and a reconciliation every few trades (as after a reconnect). In-process (engine + Binance
broker + fake exchange; the executor process SIGKILLed under chaos: tests/executor/test_exec_chaos_kill.py).

At the end: the exchange's positions equal the executor's, no client id was executed twice, no
position was uncovered at the exchange longer than the bound, and no exchange error escaped the
engine. The figures are printed; the stress command runs 1,000 orders (tests/stress).
"""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import random
import time

import pytest
from collections import Counter

from executor.brokers.binance import BinanceBroker, BinanceClient
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake, real_error  # noqa: F401  (fake: fixture)

TIMEOUT_S = 0.3          # client timeout: the late / hanging faults outlast it
RECV_WINDOW_MS = 600


def inject_fault(rng: random.Random, fake, endpoint: str) -> str:
    """Queue one seeded random fault for the next request to `endpoint`; returns its kind."""
    kind = rng.choice(["reject", "reject", "5xx_executed", "5xx_not_executed", "late", "hang", "429", "1007"])
    if kind == "reject":
        code = rng.choice([-2019, -4014, -1121, -4164] if "algo" in endpoint else [-2019, -4164])
        b = real_error(code)
        fake.fault(endpoint, "error", code=b["code"], msg=b["msg"])
    elif kind == "5xx_executed":
        fake.fault(endpoint, "accept_then_error", code=-1000, status=503, msg="An unknown error occurred.")
    elif kind == "5xx_not_executed":
        fake.fault(endpoint, "error", code=-1000, status=503, msg="An unknown error occurred.")
    elif kind == "late":       # reaches the matching engine after the client timed out, inside recvWindow
        fake.fault(endpoint, "execute_late", seconds=TIMEOUT_S + 0.1)
    elif kind == "hang":
        fake.fault(endpoint, "accept_then_hang", seconds=TIMEOUT_S + 0.2)
    elif kind == "429":
        fake.fault(endpoint, "rate_limit", retry_after=0)
    else:
        fake.fault(endpoint, "accept_then_error", code=-1007, status=408,
                   msg="Timeout waiting for response from backend server. Send status unknown; execution status unknown.")
    return kind


def run_chaos(fake, orders_target: int, seed: int, fault_rate: float = 0.15) -> dict:
    rng = random.Random(seed)
    cfg = ExecutorConfig(max_positions=2) if "max_positions" in ExecutorConfig.__dataclass_fields__ else ExecutorConfig()
    client = BinanceClient(fake.base_url, KEY, SECRET, timeout=TIMEOUT_S, recv_window=RECV_WINDOW_MS, backoff_s=0.01,
                           weight_limit=10**9, orders_10s=10**9, orders_1m=10**9)
    broker = BinanceBroker(client, unknown_margin_s=0.2, lookup_interval_s=0.05, guard_restart=False)   # no restart here
    eng = Engine(cfg, broker, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    marks = {"BTCUSDT": 50_000.0, "ETHUSDT": 2_000.0}
    faults: Counter = Counter()
    escaped = 0
    t = T0
    cycle = 0
    t0 = time.monotonic()
    behind: Counter = Counter()
    checks, mismatches = 0, []

    def process(sig):
        nonlocal escaped
        try:
            eng.process(sig)
        except Exception:            # an exchange error out of the engine = an executor exit
            escaped += 1

    def sent() -> int:
        return len(fake.orders) + len(fake.algos)

    while sent() < orders_target:
        cycle += 1
        sym = rng.choice(list(marks))
        px = marks[sym]
        for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder"):
            if rng.random() < fault_rate:
                faults[inject_fault(rng, fake, endpoint)] += 1
        side = rng.choice(["long", "short"])
        dist = px * rng.uniform(0.002, 0.01)
        stop, target = (px - dist, px + 2 * dist) if side == "long" else (px + dist, px - 2 * dist)
        process(bar(sym, t, px, px, px, px, side, 0.9, px, round(stop, 4), round(target, 4)))
        t += MIN
        move = rng.random()
        if move < 0.3:                                    # the stop fires at the exchange
            fake.trigger(sym, round(stop - dist * 0.1 if side == "long" else stop + dist * 0.1, 2))
        elif move < 0.5:                                  # the target fires
            fake.trigger(sym, round(target + dist * 0.1 if side == "long" else target - dist * 0.1, 2))
        elif move < 0.7:
            eng.command({"cmd": "flatten", "symbol": sym})
        fake.marks[sym] = px                               # back to the reference price for the next setup
        process(bar(sym, t, px, px, px, px))
        t += MIN
        # after every trade: the exchange holds what the executor holds (plus what was opened behind its back)
        ours_now: Counter = Counter()
        for p in eng.portfolio.positions.values():
            if p.status in ("open", "closing"):
                ours_now[p.symbol] += p.sign * p.qty
        checks += 1
        if any(abs(fake.positions.get(s, 0.0) - behind[s] - ours_now[s]) > 1e-9 for s in marks):
            mismatches.append((cycle, dict(fake.positions), dict(ours_now), dict(behind)))
        if rng.random() < 0.05:                            # someone trades behind the executor's back
            sign = rng.choice([1, -1])
            fake.open_behind(sym, sign * (0.01 if sym == "BTCUSDT" else 0.5), f"web_{cycle}")
            behind[sym] += sign * (0.01 if sym == "BTCUSDT" else 0.5)
            faults["behind_the_back"] += 1
        if cycle % 10 == 0 or broker.needs_reconcile():
            try:
                for a in broker.reconcile(eng, t):         # what it flattened of the exposure opened behind
                    if getattr(a, "kind", "") == "reconcile_flatten" and "unknown to the executor" in a.detail \
                            and "; flattened" in a.detail:
                        behind.pop(a.symbol, None)
            except Exception:
                escaped += 1
        fake.faults.clear()                                # faults not consumed this cycle do not pile up
    # wind down: no faults, flatten everything, a last reconciliation
    fake.faults.clear()
    eng.command({"cmd": "flatten", "symbol": "*"})
    for sym, px in marks.items():
        process(bar(sym, t, px, px, px, px))
    t += MIN
    broker.reconcile(eng, t)
    ours: Counter = Counter()
    for p in eng.portfolio.positions.values():
        if p.status in ("open", "closing"):
            ours[p.symbol] += p.sign * p.qty
    exch = {s: q for s, q in fake.positions.items() if q != 0}
    dup_orders = [c for c, n in Counter(o["clientOrderId"] for o in fake.orders.values()).items() if n > 1]
    dup_algos = [c for c, n in Counter(a["clientAlgoId"] for a in fake.algos.values()).items() if n > 1]
    return {"orders": sent(), "cycles": cycle, "faults": dict(faults), "fault_count": sum(faults.values()),
            "exchange_positions": exch, "executor_positions": {s: round(q, 10) for s, q in ours.items() if q != 0},
            "duplicates": len(dup_orders) + len(dup_algos), "duplicate_ids": dup_orders + dup_algos,
            "naked_max_s": fake.naked_now_s(), "bound_s": cfg.protect_within_ms / 1000, "escaped": escaped,
            "checks": checks, "mismatches": mismatches, "seconds": time.monotonic() - t0}


def report(r: dict) -> str:
    return (f"[chaos executor] {r['orders']} orders in {r['cycles']} trades, {r['fault_count']} faults {r['faults']}; "
            f"positions differ after {len(r['mismatches'])} of {r['checks']} trades, at the end exchange "
            f"{r['exchange_positions']} vs executor {r['executor_positions']}; "
            f"duplicates {r['duplicates']}; longest naked {r['naked_max_s']:.2f} s (bound {r['bound_s']:.0f} s, "
            f"beyond: {max(0.0, r['naked_max_s'] - r['bound_s']):.2f} s); escaped errors {r['escaped']}; "
            f"{r['seconds']:.0f} s")


def check(r: dict) -> None:
    assert r["exchange_positions"] == r["executor_positions"], report(r)
    assert r["mismatches"] == [], r["mismatches"][:3]
    assert r["duplicates"] == 0, r["duplicate_ids"]
    assert r["naked_max_s"] <= r["bound_s"], report(r)
    assert r["escaped"] == 0, report(r)
    assert r["fault_count"] >= r["cycles"] * 0.1, report(r)   # the faults really happened


@pytest.mark.parametrize("seed", [14, 15])
def test_chaos_short(fake, seed):
    r = run_chaos(fake, orders_target=120, seed=seed)
    print("\n" + report(r))
    check(r)
