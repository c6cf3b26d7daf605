"""The report of a small real run (1m USD-M perps, 3 symbols, one day, in process, the heuristic scorer so it
trades): its tearsheet figures, per-group tables, trade list (R, MAE / MFE) and run metadata equal what the
audit trail and the data say, recomputed here in SQL; the page is self-contained and its trade list sorts
and filters in headless Chromium."""
from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import orjson
import pytest

from infra.backtest import run_backtest_in_process
from infra.clickhouse import AuditStore
from infra.pipeline import RECORDED, plan_backtest
from infra.settings import REPO_ROOT

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PERPS = RECORDED / "perps_1m_2025-05.parquet"


@pytest.fixture(scope="module")
def report(chdb_dsn, tmp_path_factory):
    from infra.settings import load_settings
    d = tmp_path_factory.mktemp("tearsheet")
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(env={}).with_(clickhouse_dsn=chdb_dsn, model_path="", data_dir=str(d),
                                           namespace=f"ts-{tag}")
    plan = plan_backtest([str(PERPS)], SYMBOLS, "2025-05-20", "2025-05-21", None, None, "1m")
    res = run_backtest_in_process(settings, plan, report_dir=str(d / "report"), database=f"ts_{tag}")
    store = AuditStore(chdb_dsn, database=f"ts_{tag}")
    doc = orjson.loads((Path(res.report_dir) / "summary.json").read_bytes())
    yield plan, res, store, doc
    store.client.command(f"DROP DATABASE IF EXISTS {store.database}")


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_trade_figures_equal_the_audit_trail(report):
    _, _, store, doc = report
    s, db = doc["summary"], store.database
    _, [(n, mean, best, worst, avg_win, avg_loss)] = store.query(
        f"SELECT count(), avg(realized_pnl), max(realized_pnl), min(realized_pnl), avgIf(realized_pnl, realized_pnl > 0), "
        f"avgIf(realized_pnl, realized_pnl < 0) FROM {db}.positions FINAL WHERE status = 'closed'")
    assert n == s["trades"] > 20, "the slice should trade"
    for key, want in (("expectancy", mean), ("best_trade", best), ("worst_trade", worst), ("avg_win", avg_win),
                      ("avg_loss", avg_loss)):
        assert _close(s[key], want), key
    assert _close(s["payoff_ratio"], avg_win / -avg_loss)
    # streaks over the trail's closing order
    _, rows = store.query(f"SELECT realized_pnl FROM {db}.positions FINAL WHERE status = 'closed' "
                          "ORDER BY closed_at, position_id")
    runs = "".join("L" if p < 0 else "W" if p > 0 else "0" for (p,) in rows)
    assert s["longest_losing_streak"] == max(len(x) for x in re.findall("L+", runs))
    assert s["longest_winning_streak"] == max(len(x) for x in re.findall("W+", runs))
    # expectancy in R and SQN from R = net PnL / (qty x |fill - stop|), in SQL
    _, [(mean_r, sd_r, nr)] = store.query(
        f"SELECT avg(r), stddevSamp(r), count() FROM (SELECT realized_pnl / (qty * abs(entry_price - stop)) AS r "
        f"FROM {db}.positions FINAL WHERE status = 'closed' AND entry_price != stop)")
    assert _close(s["expectancy_r"], mean_r)
    assert math.isclose(s["sqn"], math.sqrt(nr) * mean_r / sd_r, rel_tol=1e-9)


def test_drawdown_benchmark_and_returns_equal_the_trail_and_the_data(report):
    plan, _, store, doc = report
    s, db = doc["summary"], store.database
    start = s["start_equity"]
    # the deepest fall below the running peak (the start equity counts as the first peak), in SQL
    _, [(dd, trough)] = store.query(
        f"SELECT max(1 - equity / greatest(peak, {start})), argMax(ts, 1 - equity / greatest(peak, {start})) FROM "
        f"(SELECT ts, equity, max(equity) OVER (ORDER BY ts ROWS UNBOUNDED PRECEDING) AS peak FROM {db}.equity FINAL)")
    assert math.isclose(s["max_drawdown_pct"], dd * 100, rel_tol=1e-9)
    assert s["drawdown_trough_at"] == trough
    assert s["drawdown_peak_at"] <= trough and s["drawdown_duration_days"] > 0
    final = store.scalar(f"SELECT argMax(equity, ts) FROM {db}.equity FINAL")
    assert [r["return_pct"] for r in s["monthly_returns"]] == pytest.approx([(final / start - 1) * 100])   # one month
    # buy-and-hold of the run's three symbols: first open to last close, 1 bp slippage and a taker fee each way
    _, rows = store.query(f"SELECT symbol, argMin(open, open_time), argMax(close, open_time) FROM {db}.klines FINAL "
                          "GROUP BY symbol ORDER BY symbol")
    assert [r[0] for r in rows] == plan.symbols
    rets = []
    for _, o, c in rows:
        buy, sell = o * 1.0001, c * 0.9999
        rets.append((sell - buy - 0.0005 * (buy + sell)) / buy)
    assert math.isclose(s["benchmark_return_pct"], sum(rets) / len(rets) * 100, rel_tol=1e-9)
    # its curve over the run ends there, starts near the start equity, and spans the run's bars
    curve = doc["benchmark_equity"]
    assert math.isclose(curve[-1][1], start * (1 + s["benchmark_return_pct"] / 100), rel_tol=1e-12)
    assert curve[0][0] == plan.start + 60_000 and curve[-1][0] == plan.end + 60_000 - 1
    assert abs(curve[0][1] / start - 1) < 0.01
    # one day: the risk-adjusted figures say they rest on 24 hourly returns, not on one daily point
    assert (s["sharpe_sampling"], s["sharpe_n"]) == ("1h", 24)


def test_group_tables_equal_the_audit_trail(report):
    _, _, store, doc = report
    g, db = doc["groups"], store.database
    _, sides = store.query(f"SELECT side, count(), sum(realized_pnl) FROM {db}.positions FINAL WHERE status = 'closed' "
                           "GROUP BY side")
    got = {r["group"]: r for r in g["side"]}
    assert set(got) == {s for s, _, _ in sides}
    for side, n, pnl in sides:
        assert got[side]["trades"] == n and _close(got[side]["pnl"], pnl)
        assert got[side]["ci_lo"] <= got[side]["mean_pnl"] <= got[side]["ci_hi"]
    blocks = {"FVG": ["fvg", "fvg_mitigated"], "OB": ["ob", "ob_mitigated"], "sweep": ["sweep"], "BOS": ["bos"],
              "CHoCH": ["choch"]}
    got = {r["group"]: r for r in g["block"]}
    for name, events in blocks.items():
        _, [(n, pnl)] = store.query(
            f"SELECT count(), sum(realized_pnl) FROM {db}.positions FINAL WHERE status = 'closed' "
            f"AND hasAny(splitByChar('+', pattern), {events})")
        if n:
            assert got[name]["trades"] == n and _close(got[name]["pnl"], pnl), name
        else:
            assert name not in got
    assert sum(r["trades"] for r in g["block"]) >= doc["summary"]["trades"]   # a trade counts in each of its blocks
    _, tiers = store.query(f"SELECT tier, trades FROM {db}.pnl_by_tier")
    assert {r["group"]: r["trades"] for r in g["tier"]} == dict(tiers)


def test_trade_list_equals_the_trail_with_r_and_excursions(report):
    _, _, store, doc = report
    db = store.database
    # MAE / MFE from the klines wholly inside each trade, and its fills, in SQL
    _, rows = store.query(f"""
        SELECT p.position_id, p.realized_pnl / (p.qty * abs(p.entry_price - p.stop)),
               p.realized_pnl / (p.qty * p.entry_price) * 100,
               if(p.side = 'long', p.entry_price - least(p.entry_price, p.exit_price, minIf(k.low, k.open_time >= p.opened_at AND k.open_time + 59999 <= p.closed_at)),
                  greatest(p.entry_price, p.exit_price, maxIf(k.high, k.open_time >= p.opened_at AND k.open_time + 59999 <= p.closed_at)) - p.entry_price) / p.entry_price * 100,
               if(p.side = 'long', greatest(p.entry_price, p.exit_price, maxIf(k.high, k.open_time >= p.opened_at AND k.open_time + 59999 <= p.closed_at)) - p.entry_price,
                  p.entry_price - least(p.entry_price, p.exit_price, minIf(k.low, k.open_time >= p.opened_at AND k.open_time + 59999 <= p.closed_at))) / p.entry_price * 100
        FROM (SELECT * FROM {db}.positions FINAL WHERE status = 'closed') AS p
        INNER JOIN (SELECT * FROM {db}.klines FINAL) AS k ON k.symbol = p.symbol
        GROUP BY p.position_id, p.side, p.entry_price, p.exit_price, p.realized_pnl, p.qty, p.stop""")
    want = {r[0]: r[1:] for r in rows}
    got = {t["position_id"]: t for t in doc["trades"]}
    assert set(got) == set(want) and len(doc["trades"]) == doc["summary"]["trades"]
    for pid, (r, pct, mae, mfe) in want.items():
        t = got[pid]
        assert math.isclose(t["r"], r, rel_tol=1e-9) and math.isclose(t["pnl_pct"], pct, rel_tol=1e-9)
        assert math.isclose(t["mae_pct"], mae, rel_tol=1e-9, abs_tol=1e-12), pid
        assert math.isclose(t["mfe_pct"], mfe, rel_tol=1e-9, abs_tol=1e-12), pid
        assert t["mae_pct"] >= 0 and t["mfe_pct"] >= 0
    assert any(t["mfe_pct"] > 0 for t in doc["trades"]) and any(t["mae_pct"] > 0 for t in doc["trades"])
    page = (Path(report[1].report_dir) / "index.html").read_text()
    assert all(f'id="trade-{pid}"' in page for pid in want)
    # each trade links to its symbol's chart page at its entry
    for t in doc["trades"]:
        assert f'<tr id="trade-{t["position_id"]}"><td data-v=""><a href="chart_{t["symbol"]}.html#t={t["opened_at"]}">' in page
        assert (Path(report[1].report_dir) / f"chart_{t['symbol']}.html").exists()


def test_run_metadata(report):
    plan, _, store, doc = report
    run = doc["run"]
    assert run["symbols"] == plan.symbols and run["interval"] == "1m" and run["htf"] == "5 x 1m"
    assert run["scorer"] == "heuristic" and run["settings_changed"]["model_path"] == ""
    assert run["model_versions"] == [r[0] for r in store.query(
        f"SELECT DISTINCT model_version FROM {store.database}.signals FINAL ORDER BY 1")[1]] == ["heuristic-v1"]
    [f] = run["data_files"]
    assert f["sha256"] == hashlib.sha256(PERPS.read_bytes()).hexdigest() and f["bytes"] == PERPS.stat().st_size
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run["code"]["commit"] == head
    assert run["wall_s"] > 0
    page = (Path(report[1].report_dir) / "index.html").read_text()
    assert f["sha256"] in page and head in page
    # self-contained: nothing is fetched from the network
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_trade_list_filters_and_sorts_in_chromium(report):
    _, res, _, doc = report
    url = (Path(res.report_dir) / "index.html").as_uri() + "#q=short&sort=r&dir=desc"
    out = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert 'id="trades"' in dom, out.stderr[-2000:]
    shorts = sorted((t for t in doc["trades"] if t["side"] == "short"), key=lambda t: -t["r"])
    assert re.search(r'id="trade-count">(\d+)<', dom).group(1) == str(len(shorts))
    shown = re.findall(r'<tr id="trade-([^"]+)"(?![^>]*display: none)', dom)
    assert shown == [t["position_id"] for t in shorts]


def test_compare_puts_runs_side_by_side(report, tmp_path, capsys):
    from infra import cli
    from infra.compare import FIGURES, _meta_rows, figure_rows, load_run
    from infra.tearsheet_html import cell
    _, res, _, doc = report
    # the same real report twice: by its directory and by a run name under a reports root
    root = tmp_path / "reports"
    shutil.copytree(res.report_dir, root / "copy")
    a = load_run(res.report_dir)
    b = load_run("copy", reports=root)
    rows = figure_rows([a, b])
    assert [r["figure"] for r in rows[:len(FIGURES)]] == [label for label, _ in FIGURES]
    s = doc["summary"]
    for (label, key), row in zip(FIGURES, rows):
        first, second = list(row.values())[1:]
        assert first == second and first.startswith(cell(key, s[key])), label
    # the random-entry baselines next to the strategy
    st = s["baselines"]["strategy"]
    assert list(rows[len(FIGURES)].values())[1] == f"{st['mean']:+.2f} [{st['lo']:+.2f}, {st['hi']:+.2f}]"
    # a run that differs in one setting says so, and only that
    other = orjson.loads((root / "copy" / "summary.json").read_bytes())
    other["run"]["settings_changed"]["SMC_EXEC_EXAMPLE_KNOB"] = "0.0004"
    (root / "copy" / "summary.json").write_bytes(orjson.dumps(other))
    meta = _meta_rows([a, load_run("copy", reports=root)])[-1]
    assert list(meta.values())[1:] == ["SMC_EXEC_EXAMPLE_KNOB=(default)", "SMC_EXEC_EXAMPLE_KNOB='0.0004'"]
    assert cli.main(["compare", res.report_dir, str(root / "copy"), "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert page.count(cell("net_pnl", s["net_pnl"])) >= 2 and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


@pytest.mark.parametrize("argv,says", [(["nowhere-1", "nowhere-2"], "run 'nowhere-1': no summary.json"),
                                       (["only-one"], "at least two runs")])
def test_compare_mistakes_are_one_line_exit_2(argv, says, tmp_path, capsys):
    from infra import cli
    assert cli.main(["compare", *argv, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_compare_rejects_a_file_that_is_not_a_report(tmp_path, capsys):
    from infra import cli
    for name, text in (("bad", "{not json"), ("other", '{"sets": {}}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    for name, says in (("bad", "is not valid JSON"), ("other", "is not a run report")):
        assert cli.main(["compare", str(tmp_path / name), str(tmp_path / name), "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1


def test_headline_numbers_have_one_format_per_kind(report):
    _, res, _, doc = report
    page = (Path(res.report_dir) / "index.html").read_text()
    head = page[page.index("<h2>Tearsheet</h2>"):page.index("<h2>Monthly returns")]
    values = re.findall(r"<td>([^<]*)</td>", head)
    assert len(values) >= 30
    # USDT and ratios with 2 decimals, percentages / R / days with 2 decimals and their unit, counts as integers,
    # times as UTC minutes; nothing like the old 0.3870 next to -9.3712
    shape = re.compile(r"-?[\d,]+\.\d\d( %| R| d)?|[+-]\d+\.\d\d R|[\d,]+( min)?|\d{4}-\d\d-\d\d \d\d:\d\d|n/a|not recovered|∞|–")
    bad = [v for v in values if not shape.fullmatch(v)]
    assert not bad, bad
    s = doc["summary"]
    assert f"<td>{s['win_rate'] * 100:.2f} %</td>" in head and f"<td>{s['return_pct']:.2f} %</td>" in head
