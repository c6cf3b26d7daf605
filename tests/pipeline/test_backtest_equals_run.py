"""`smc backtest` (in process) gives the records `smc run` (Kafka + Faust + executor service) gives, byte for
byte, on real 1m perps: every kline, signal, decision, order, fill, position and equity record, in the same
order per key (= per partition), and the same report. The only field allowed to differ is `wall_ts` (wall
time of a decision / alert, for latency; 0 in process)."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import orjson
import pytest

from infra import kafka_io
from infra.backtest import run_backtest_in_process, run_in_process
from infra.pipeline import RECORDED, plan_backtest, run_backtest

pytestmark = pytest.mark.kafka

PERPS = str(RECORDED / "perps_1m_2025-05.parquet")
# a gap day for DOGE/DOT (their data starts mid-month) is inside the period: symbols joining mid-run
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "LTCUSDT"]
TOPICS = ("klines", "signals", "decisions", "orders", "fills", "positions", "equity", "alerts", "dlq")
_WALL = re.compile(rb'"wall_ts":\d+')


def _norm(value: bytes) -> bytes:
    return _WALL.sub(b'"wall_ts":0', value)


def _by_key(records) -> dict:
    out: dict = {}
    for key, value in records:
        out.setdefault(key, []).append(_norm(value))
    return out


@pytest.fixture(scope="module")
def both(kafka_bootstrap, chdb_dsn, tmp_path_factory):
    from infra.settings import load_settings
    base = load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap, clickhouse_dsn=chdb_dsn, model_path="")
    plan = plan_backtest([PERPS], SYMBOLS, "2025-05-20", "2025-05-22", None, 0, "1m")
    d = tmp_path_factory.mktemp("bteq")
    tag = uuid.uuid4().hex[:8]
    s = base.with_(namespace=f"bteq-{tag}", data_dir=str(d))
    run = run_backtest(s, plan, explicit_broker=True, report_dir=str(d / "run-report"), database=f"bteq_run_{tag}",
                       progress=False)
    ran = {t: [(m.key(), m.value()) for m in kafka_io.read_topic(s, t, timeout=120)] for t in TOPICS}
    s_in = s.with_(interval=plan.interval, replay_end=plan.end, universe=",".join(plan.symbols))   # as run_backtest
    outputs = {form: run_in_process(s_in, plan, keep=True, engine_form=form)[0] for form in ("stream", "batch")}
    bt = run_backtest_in_process(base.with_(namespace=f"bteqip-{tag}", data_dir=str(d)), plan,
                                 report_dir=str(d / "bt-report"), database=f"bteq_bt_{tag}")
    yield plan, run, ran, outputs, bt
    kafka_io.delete_namespace(s)


@pytest.mark.parametrize("form", ["stream", "batch"])
def test_every_record_equals_smc_run(both, form):
    plan, run, ran, outputs, _ = both
    outputs = outputs[form]
    assert len(ran["klines"]) == plan.klines
    assert len(ran["orders"]) > 50 and len(ran["fills"]) > 50, "the slice should trade"
    for t in TOPICS:
        got, want = _by_key(outputs.records.get(t, [])), _by_key(ran[t])
        assert set(got) == set(want), (t, sorted(set(got) ^ set(want))[:5])
        for key in want:
            a, b = got[key], want[key]
            assert len(a) == len(b), (t, key, len(a), len(b))
            bad = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            assert bad is None, f"{t} {key!r} record {bad}: in process {a[bad][:300]!r} != smc run {b[bad][:300]!r}"
    # the executor's cross-symbol order: the equity records (one key) are one sequence in both
    assert outputs.counts["equity"] == len(ran["equity"]) > 50


def test_same_report(both):
    _, run, _, _, bt = both
    a = orjson.loads((Path(run.report_dir) / "summary.json").read_bytes())["summary"]
    b = orjson.loads((Path(bt.report_dir) / "summary.json").read_bytes())["summary"]
    assert a == b
    assert a["trades"] > 20
