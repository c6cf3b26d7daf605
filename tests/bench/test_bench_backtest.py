"""`smc backtest` (in process) throughput and memory on real 1m perps (prints only; nothing about speed is asserted).

Run: pytest -m bench -s tests/bench/test_bench_backtest.py
Data: ingest/recorded/perps_1m_2025-05.parquet (18 real USD-M perpetuals, 1m, 2025-05). Heuristic scorer,
audit off (records counted, not stored: the cost of the engine, not of chDB). Baseline in the same run: the
numba batch engine (compute_batch_all) alone over the same bars, i.e. the SMC columns' own limit. Peak RSS
per period length is measured in a fresh process each (ru_maxrss).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]
PERPS = REPO / "ingest" / "recorded" / "perps_1m_2025-05.parquet"
COLS = ["open_time", "open", "high", "low", "close", "volume"]

_CHILD = r"""
import resource, sys, time, orjson
from infra.backtest import run_in_process
from infra.pipeline import plan_backtest
from infra.settings import load_settings
days = float(sys.argv[1])
form = sys.argv[3]
plan = plan_backtest([sys.argv[2]], None, None, None, days, 18, "1m")
s = load_settings(env={}).with_(model_path="", interval="1m", replay_end=plan.end, namespace="bench")
t0 = time.perf_counter()
out, timings = run_in_process(s, plan, engine_form=form)
wall = time.perf_counter() - t0
print(orjson.dumps({"form": form, "days": days, "symbols": len(plan.symbols), "klines": plan.klines, "wall_s": wall,
                    "counts": out.counts, "timings": timings,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}).decode())
"""


def _child(days: float, form: str) -> dict:
    import orjson
    env = {**os.environ, "PYTHONPATH": str(REPO), "SMC_CREDIT": "0"}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(days), str(PERPS), form], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return orjson.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.bench
def test_bench_backtest_18_symbols_by_period():
    from processors.smc import compute_batch_all
    import orjson
    print(f"\n[bench backtest] load average before: {os.getloadavg()}  ({os.cpu_count()} cores); orjson {orjson.__version__}")
    df = pl.read_parquet(PERPS).sort(["symbol", "open_time"])
    t0 = time.perf_counter()
    n = 0
    for _, d in df.group_by("symbol", maintain_order=True):
        compute_batch_all(d.select(COLS))
        n += d.height
    base = n / (time.perf_counter() - t0)
    print(f"[bench backtest] baseline, same run: numba batch engine alone, {df['symbol'].n_unique()} symbols, "
          f"{n:,} bars: {base:,.0f} bars/s")
    # 28 days: the file holds 30, and the point-in-time universe (--top) ranks on the day before the period
    for form, days in (("batch", 1), ("batch", 7), ("batch", 28), ("stream", 1), ("stream", 7), ("stream", 28)):
        r = _child(days, form)
        rate = r["klines"] / r["wall_s"]
        print(f"[bench backtest] smc backtest --engine {form}, {r['symbols']} symbols x {days} d 1m: {r['klines']:,} "
              f"klines in {r['wall_s']:.1f} s = {rate:,.0f} klines/s end to end ({rate / base:.3f} x the batch engine); "
              f"peak RSS {r['peak_rss_mb']:.0f} MB; records {r['counts']}; "
              + ", ".join(f"{k}={v:.1f}s" for k, v in r["timings"].items()))
        assert r["klines"] > 0 and r["counts"]["signals"] >= r["klines"]
    if os.environ.get("SMC_KAFKA_BOOTSTRAP"):     # the same 18 symbols x 1 day through smc run (Kafka + Faust)
        import tempfile
        from infra.pipeline import plan_backtest, run_backtest
        from infra.settings import load_settings
        plan = plan_backtest([str(PERPS)], None, None, None, 1, 18, "1m")
        with tempfile.TemporaryDirectory() as d:
            s = load_settings(env={}).with_(kafka_bootstrap=os.environ["SMC_KAFKA_BOOTSTRAP"], model_path="",
                                            data_dir=d, namespace=f"benchrun-{os.getpid()}")
            t0 = time.perf_counter()
            run_backtest(s, plan, explicit_broker=True, report_dir=d + "/r", progress=False)
            wall = time.perf_counter() - t0
        print(f"[bench backtest] smc run (Kafka + Faust + executor service + audit), 18 symbols x 1 d 1m: "
              f"{plan.klines:,} klines in {wall:.1f} s = {plan.klines / wall:,.0f} klines/s end to end")
    print(f"[bench backtest] load average after: {os.getloadavg()}")
