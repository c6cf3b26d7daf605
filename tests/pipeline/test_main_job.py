"""The main job end to end on the real broker and the real ClickHouse engine: the report equals the
audit trail, two backtests of the same slice are identical, and a topic replay diffs as identical
unless the code changed (then the diff names the changed field)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import orjson
import pytest

from infra import kafka_io
from infra.clickhouse import AuditStore
from infra.pipeline import plan_backtest, run_backtest
from infra.topic_replay import replay_and_diff
from schemas.audit import TABLES

pytestmark = pytest.mark.kafka

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "BNBUSDT"]


@pytest.fixture(scope="module")
def two_runs(kafka_bootstrap, chdb_dsn, tmp_path_factory):
    from infra.settings import load_settings
    base = load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap, clickhouse_dsn=chdb_dsn,
                                       model_path="")   # the heuristic trades; the shipped model is too cautious
    # the main job's own data: real USD-M perps, 1m (M5 context), two days
    plan = plan_backtest(None, SYMBOLS, "2025-05-20", "2025-05-22", None, None, "1m")
    runs = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"run{i}")
        s = base.with_(namespace=f"mj{i}-{d.name[-6:]}", data_dir=str(d))
        res = run_backtest(s, plan, explicit_broker=True, report_dir=str(d / "report"), database=f"mj{i}_{d.name[-6:]}",
                           progress=False)
        runs.append((s, res, AuditStore(s.clickhouse_dsn, database=f"mj{i}_{d.name[-6:]}")))
    yield plan, runs
    for s, _, store in runs:
        store.client.command(f"DROP DATABASE IF EXISTS {store.database}")
        kafka_io.delete_namespace(s)


def _rows(store: AuditStore, table: str, drop=("wall_ts", "inserted_at")) -> list[tuple]:
    cols = [n for n, _ in TABLES[table].columns() if n not in drop]
    _, rows = store.query(f"SELECT {', '.join(cols)} FROM {store.database}.{table} FINAL ORDER BY {TABLES[table].order_by}")
    return rows


def test_report_numbers_equal_the_audit_trail(two_runs):
    plan, runs = two_runs
    s, res, store = runs[0]
    db = store.database
    summary = orjson.loads((Path(res.report_dir) / "summary.json").read_bytes())["summary"]
    trades = store.count("positions", "status = 'closed'")
    assert trades > 20, "the slice should trade"
    assert summary["trades"] == trades
    assert math.isclose(summary["net_pnl"], store.scalar(f"SELECT sum(realized_pnl) FROM {db}.positions FINAL WHERE status='closed'"),
                        rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(summary["final_equity"], store.scalar(f"SELECT argMax(equity, ts) FROM {db}.equity FINAL"), rel_tol=1e-12)
    assert math.isclose(summary["fees"], store.scalar(f"SELECT sum(fees) FROM {db}.positions FINAL WHERE status='closed'"),
                        rel_tol=1e-9, abs_tol=1e-9)
    wins = store.scalar(f"SELECT countIf(realized_pnl > 0) FROM {db}.positions FINAL WHERE status='closed'")
    assert math.isclose(summary["win_rate"], int(wins) / trades)
    # every kline of the plan is in the audit trail once, and every base bar has its signal
    assert summary["klines"] == plan.klines == store.count("klines")
    assert store.count("signals", "timeframe = '1m'") == plan.klines
    assert store.count("signals", "timeframe = '5m'") == plan.klines // 5
    # the shipped analytics views agree with the same trail
    _, tiers = store.query(f"SELECT sum(trades), round(sum(pnl), 4) FROM {db}.pnl_by_tier")
    assert tiers[0][0] == trades and math.isclose(tiers[0][1], round(summary["net_pnl"], 4), abs_tol=1e-3)
    # sizing per tier: entries and cap-bound counts, and the risk taken, recomputed here in SQL
    tiers = {r["tier_risk_pct"]: r for r in summary["sizing_by_tier"]}
    _, rows = store.query(
        f"SELECT round(d.risk_pct * 100, 6) AS tier, count(), countIf(d.reason = 'notional_cap'), "
        f"avgIf(p.qty * abs(p.entry_price - p.stop) / d.equity * 100, p.entry_price > 0) "
        f"FROM (SELECT * FROM {db}.decisions FINAL WHERE action = 'enter') AS d "
        f"LEFT JOIN (SELECT * FROM {db}.positions FINAL) AS p ON p.signal_id = d.signal_id GROUP BY tier")
    assert rows and {r[0] for r in rows} == set(tiers)
    for tier, n, capped, taken in rows:
        assert (tiers[tier]["entries"], tiers[tier]["cap_bound"]) == (n, capped)
        assert math.isclose(tiers[tier]["risk_taken_pct"], taken, rel_tol=1e-9)
    for png in ("equity", "by_symbol", "by_pattern", "by_tier", "by_hour"):
        assert (Path(res.report_dir) / f"{png}.png").stat().st_size > 5_000


def test_two_backtests_are_identical(two_runs):
    _, runs = two_runs
    (_, r0, a), (_, r1, b) = runs
    for table in ("signals", "decisions", "orders", "fills", "positions", "equity"):
        ra, rb = _rows(a, table), _rows(b, table)
        assert ra == rb, f"{table} differs between two runs of the same slice"
        assert ra, table
    assert r0.counts["orders"] == r1.counts["orders"] > 0


def test_topic_replay_is_identical_and_shows_a_changed_feature(two_runs, tmp_path):
    _, runs = two_runs
    s, res, _ = runs[0]
    src = s   # run_backtest saved its settings under <data_dir>/runs/<ns>: the replay scores the same way
    same = replay_and_diff(src, start="2025-05-21", end="2025-05-21T06:00", into=f"{s.namespace}.r1")
    assert same.identical, same.render()
    assert same.compared > 100

    # a deliberate change to one feature's formula (rsi_14 halved) in the replayed code
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(textwrap.dedent("""
        import processors.smc.engine as engine
        from processors.smc.features import FEATURE_NAMES
        _orig, _i = engine.features_scalar, FEATURE_NAMES.index("rsi_14")
        def features_scalar(*args, **kw):
            f = list(_orig(*args, **kw))
            f[_i] = f[_i] * 0.5
            return tuple(f)
        engine.features_scalar = features_scalar
    """))
    changed = replay_and_diff(src, start="2025-05-21", end="2025-05-21T06:00", into=f"{s.namespace}.r2",
                              extra_env={"PYTHONPATH": f"{patch}:{Path(__file__).resolve().parents[2]}"})   # this checkout, not the installed one
    assert not changed.identical
    assert not changed.missing and not changed.extra
    fields = {f for ch in changed.changes for f, _, _ in ch.fields}
    assert "features.rsi_14" in fields
    assert fields <= {"features.rsi_14", "confidence", "side", "entry", "stop", "target"}, fields
    for ns in (f"{s.namespace}.r1", f"{s.namespace}.r2"):
        kafka_io.delete_namespace(s.with_(namespace=ns))


def test_shadow_trades_are_the_executors_trades_where_it_traded(two_runs):
    """Every setup is simulated (shadow trades); where the executor took one, the shadow trade's net PnL
    per unit times the position's quantity is the position's realized PnL, and the tier table counts
    every simulated setup once."""
    from infra.report import run_shadow_trades
    _, runs = two_runs
    _, res, store = runs[0]
    db = store.database
    sh = run_shadow_trades(store)
    setups = store.count("signals", "side != 'flat'")
    assert 0 < sh["r"].size <= setups and sh["r"].size > 0.9 * setups   # only those still open at the end drop
    shadow = {(s, tf, int(t)): p for s, tf, t, p in zip(sh["symbol"], sh["timeframe"], sh["open_time"], sh["pnl"])}
    _, rows = store.query(
        f"SELECT s.symbol, s.timeframe, s.open_time, p.qty, p.realized_pnl, p.exit_reason "
        f"FROM (SELECT * FROM {db}.positions FINAL WHERE status = 'closed') AS p "
        f"JOIN (SELECT * FROM {db}.signals FINAL) AS s ON s.signal_id = p.signal_id")
    assert len(rows) == store.count("positions", "status = 'closed'") > 20
    for sym, tf, t, qty, pnl, why in rows:
        assert math.isclose(shadow[(sym, tf, int(t))] * qty, pnl, rel_tol=1e-9, abs_tol=1e-9), (sym, tf, t, why)
    summary = orjson.loads((Path(res.report_dir) / "summary.json").read_bytes())["summary"]
    rows = summary["shadow_by_tier"]
    assert sum(r["n"] for r in rows if r["timeframe"] == "all") == sh["r"].size
    assert sum(r["n"] for r in rows if r["timeframe"] != "all") == sh["r"].size
    html_page = (Path(res.report_dir) / "index.html").read_text()
    assert "Shadow trades" in html_page
