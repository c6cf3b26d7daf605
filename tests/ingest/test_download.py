"""`smc data download` (ingest.download): the pure parts, and the whole command against a local fake
serving Binance's real formats (kline zips with and without the header row, sha256sum CHECKSUM files,
fundingRate pages) filled with REAL rows: the 1m USD-M klines and funding settlements of
shared/data (klines/, funding/; falling back to the same rows in ingest/recorded/*_2025-05.parquet
in a clone without shared/data beside it)."""
from __future__ import annotations

import csv
import hashlib
from datetime import datetime, timezone
from pathlib import Path

import httpx
import polars as pl
import pytest

from fakes.fake_binance import FakeBinance
from fakes.fake_binance_data import DUMP_HEADER, BinanceData, checksum_text, make_zip
from ingest import download as dl
from ingest.pack_recorded import FUNDING_SCHEMA, KLINE_SCHEMA, _frame

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "ingest" / "recorded"
SHARED_DATA = REPO.parent / "shared" / "data"    # as tests/conftest.py (not imported: tests/models has a conftest too)
STEP = 60_000
DAY = 86_400_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


# ---- real rows ------------------------------------------------------------------------------------
def real_kline_fields(symbol: str, start: int, end: int) -> list[list[str]]:
    """open_time..close_time of the real 1m bars in [start, end), as the source's text."""
    src = SHARED_DATA / "klines" / f"{symbol}-1m.csv"
    if src.exists():
        with open(src) as fh:
            rows = [r[:7] for r in csv.reader(fh)][1:]
    else:
        df = pl.read_parquet(RECORDED / "perps_1m_2025-05.parquet").filter(pl.col("symbol") == symbol)
        rows = [[str(r[1]), *map(repr, r[2:7]), str(r[7])] for r in df.iter_rows()]
    return [r for r in rows if start <= int(r[0]) < end]


def real_funding_rows(symbol: str, start: int, end: int) -> list[list[str]]:
    """funding_time, funding_rate, mark_price of the real settlements in [start, end), as text."""
    src = SHARED_DATA / "funding" / f"{symbol}-funding.csv"
    if src.exists():
        with open(src) as fh:
            rows = [r for r in csv.reader(fh)][1:]
    else:
        df = pl.read_parquet(RECORDED / "funding_2025-05.parquet").filter(pl.col("symbol") == symbol)
        rows = [[str(t), repr(r), "" if m is None else repr(m)] for _, t, r, m in df.iter_rows()]
    return [r for r in rows if start <= int(r[0]) < end]


def dump_csv(fields: list[list[str]], header: bool) -> bytes:
    """Binance's 12-column kline CSV. The source has no quote_volume / count / taker-buy columns, so
    those five are "0" placeholders here (the downloader drops them; they are never written)."""
    lines = [DUMP_HEADER] if header else []
    lines += [",".join(f + ["0", "0", "0", "0", "0"]) for f in fields]
    return ("\n".join(lines) + "\n").encode()


def funding_payload(symbol: str, rows: list[list[str]]) -> list[dict]:
    """fundingRate's response rows (symbol, fundingTime, fundingRate as Binance's 8-decimal string,
    markPrice). markPrice is the recorded mark (the 8h mark candle's open) standing in for Binance's
    field; "" where none is recorded."""
    return [{"symbol": symbol, "fundingTime": int(t), "fundingRate": f"{float(r):.8f}", "markPrice": m}
            for t, r, m in rows]


def expected_klines(tmp: Path, parts: dict[str, list[list[str]]]) -> pl.DataFrame:
    """The recorded-layout frame ingest.pack_recorded builds from the same CSV rows."""
    files = []
    for sym, fields in parts.items():
        f = tmp / f"{sym}-1m.csv"
        f.write_text("open_time,open,high,low,close,volume,close_time\n" + "\n".join(",".join(r) for r in fields) + "\n")
        files.append(f)
    return _frame(files, "perps_1m", KLINE_SCHEMA)


def expected_funding(tmp: Path, parts: dict[str, list[list[str]]]) -> pl.DataFrame:
    files = []
    for sym, rows in parts.items():
        f = tmp / f"{sym}-funding.csv"
        f.write_text("funding_time,funding_rate,mark_price\n" + "\n".join(",".join(r) for r in rows) + "\n")
        files.append(f)
    return _frame(files, "funding", FUNDING_SCHEMA)


def serve_klines(data: BinanceData, file: dl.KlineFile, header: bool, checksum: str | None = None) -> int:
    fields = real_kline_fields(file.symbol, file.start, file.end)
    data.add_zip(file.path, dump_csv(fields, header), checksum)
    return len(fields)


# ---- pure parts -----------------------------------------------------------------------------------
def test_plan_uses_monthly_zips_for_whole_months_and_daily_ones_elsewhere():
    files = dl.plan_kline_files(["btcusdt", "ETHUSDT"], "1m", ms("2024-01-30T06:00"), ms("2024-03-02"))
    btc = [f for f in files if f.symbol == "BTCUSDT"]
    assert [(f.kind, f.label) for f in btc] == [("daily", "2024-01-30"), ("daily", "2024-01-31"),
                                                 ("monthly", "2024-02"), ("daily", "2024-03-01")]
    assert btc[2].path == "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"
    assert btc[0].url("https://data.binance.vision/") == \
        "https://data.binance.vision/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-30.zip"
    assert btc[2].end - btc[2].start == 29 * DAY              # 2024 is a leap year
    assert len(files) == 2 * len(btc)
    # every minute of the range lies in exactly one planned file, and no file lies wholly outside it
    covered = sorted((f.start, f.end) for f in btc)
    assert covered[0][0] <= ms("2024-01-30T06:00") and covered[-1][1] >= ms("2024-03-02")
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    daily = dl.plan_kline_files(["BTCUSDT"], "1m", ms("2024-02-01"), ms("2024-03-01"), monthly=False)
    assert [f.kind for f in daily] == ["daily"] * 29
    year_end = dl.plan_kline_files(["BTCUSDT"], "1m", ms("2024-12-01"), ms("2025-01-01"))
    assert [(f.kind, f.label) for f in year_end] == [("monthly", "2024-12")]
    with pytest.raises(dl.DownloadError, match="empty range"):
        dl.plan_kline_files(["BTCUSDT"], "1m", ms("2024-02-02"), ms("2024-02-01"))


def test_default_period_names_are_file_name_safe_and_month_style_for_a_whole_month():
    assert dl.default_period(ms("2025-01-01"), ms("2025-02-01")) == "2025-01"
    assert dl.default_period(ms("2025-12-01"), ms("2026-01-01")) == "2025-12"
    assert dl.default_period(ms("2025-01-01"), ms("2025-01-03")) == "2025-01-01-2025-01-03"
    assert dl.default_period(ms("2025-01-01"), ms("2025-03-01")) == "2025-01-01-2025-03-01"
    assert dl.default_period(ms("2025-01-01T12:30"), ms("2025-01-02")) == "2025-01-01T1230-2025-01-02"
    for name in ("2025-01", "2025-01-01-2025-01-03", "2025-01-01T1230-2025-01-02"):
        assert dl.check_period(name) == name
        from models.train import period_of
        assert period_of(f"perps_1m_{name}.parquet") == name      # the funding look-up finds it
    for bad in ("my_set", "a/b", "", ".hidden"):
        with pytest.raises(dl.DownloadError):
            dl.check_period(bad)


def test_checksum_is_read_in_sha256sum_format_and_a_mismatch_names_both_hashes():
    data = make_zip("BTCUSDT-1m-2025-05-10.csv", b"1,2,3\n")
    name = "BTCUSDT-1m-2025-05-10.zip"
    text = checksum_text(data, name)
    assert dl.parse_checksum(text) == (hashlib.sha256(data).hexdigest(), name)
    assert dl.verify_checksum(name, data, text) == hashlib.sha256(data).hexdigest()
    other = checksum_text(data + b"x", name)
    with pytest.raises(dl.ChecksumMismatch) as exc:
        dl.verify_checksum(name, data, other)
    assert exc.value.expected == other.split()[0] and exc.value.actual == hashlib.sha256(data).hexdigest()
    assert name in str(exc.value) and exc.value.expected in str(exc.value) and exc.value.actual in str(exc.value)
    with pytest.raises(dl.DownloadError, match="names"):
        dl.verify_checksum("ETHUSDT-1m-2025-05-10.zip", data, text)
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.parse_checksum("not a checksum")


def test_zip_with_and_without_header_give_the_same_frame_as_the_packer():
    file = dl.plan_kline_files(["BTCUSDT"], "1m", ms("2025-05-10"), ms("2025-05-11"))[0]
    fields = real_kline_fields("BTCUSDT", file.start, file.end)
    assert len(fields) == 1440
    with_header = dl.klines_from_zip(make_zip("BTCUSDT-1m-2025-05-10.csv", dump_csv(fields, True)), file)
    without = dl.klines_from_zip(make_zip("BTCUSDT-1m-2025-05-10.csv", dump_csv(fields, False)), file)
    assert with_header.equals(without)
    assert with_header.columns == dl.KLINE_COLUMNS
    assert with_header.schema == {"symbol": pl.Utf8, **KLINE_SCHEMA}


def test_expected_frame_helper_matches_the_shipped_parquet(tmp_path):
    # guards the oracle of the round trip: the packer on these rows gives the shipped rows
    fields = real_kline_fields("ETHUSDT", ms("2025-05-10"), ms("2025-05-11"))
    shipped = pl.read_parquet(RECORDED / "perps_1m_2025-05.parquet").filter(
        (pl.col("symbol") == "ETHUSDT") & pl.col("open_time").is_between(ms("2025-05-10"), ms("2025-05-11") - 1))
    assert expected_klines(tmp_path, {"ETHUSDT": fields}).equals(shipped)


def test_bars_off_the_files_grid_are_refused():
    file = dl.plan_kline_files(["BTCUSDT"], "1m", ms("2025-05-10"), ms("2025-05-11"))[0]
    fields = real_kline_fields("BTCUSDT", file.start - 2 * STEP, file.start + 5 * STEP)   # 2 bars of the day before
    with pytest.raises(dl.DownloadError, match="off the 1m grid"):
        dl.klines_from_zip(make_zip("x.csv", dump_csv(fields, False)), file)
    us = [[str(int(f[0]) * 1000), *f[1:6], str(int(f[6]) * 1000)] for f in real_kline_fields(
        "BTCUSDT", file.start, file.start + 3 * STEP)]                                    # microseconds
    with pytest.raises(dl.DownloadError, match="milliseconds"):
        dl.klines_from_zip(make_zip("x.csv", dump_csv(us, True)), file)


def test_gaps_are_reported_where_bars_are_missing_and_duplicates_refused():
    t0 = ms("2025-05-10")
    present = [t0 + i * STEP for i in range(10) if i not in (0, 4, 5, 9)]
    df = pl.DataFrame({"symbol": ["BTCUSDT"] * len(present), "open_time": present}, schema={"symbol": pl.Utf8, "open_time": pl.Int64})
    gaps = dl.find_gaps(df, STEP, t0, t0 + 10 * STEP, ["BTCUSDT", "ETHUSDT"])
    assert [(g.symbol, g.first_missing, g.bars) for g in gaps] == [
        ("BTCUSDT", t0, 1), ("BTCUSDT", t0 + 4 * STEP, 2), ("BTCUSDT", t0 + 9 * STEP, 1), ("ETHUSDT", t0, 10)]
    missing = {g.first_missing + k * STEP for g in gaps if g.symbol == "BTCUSDT" for k in range(g.bars)}
    assert missing.isdisjoint(present) and len(missing) + len(present) == 10
    assert "2025-05-10 00:04 .. 2025-05-10 00:05" in gaps[1].describe(STEP)
    full = pl.DataFrame({"symbol": ["BTCUSDT"] * 10, "open_time": [t0 + i * STEP for i in range(10)]})
    assert dl.find_gaps(full, STEP, t0, t0 + 10 * STEP, ["BTCUSDT"]) == []
    with pytest.raises(dl.DownloadError, match="more than once"):
        dl.find_gaps(pl.concat([full, full.head(1)]), STEP, t0, t0 + 10 * STEP, ["BTCUSDT"])


def test_funding_paging_plan_and_frame():
    end = ms("2025-06-01")
    page = [{"symbol": "BTCUSDT", "fundingTime": ms("2025-05-01") + 8 * 3_600_000 * i + 3, "fundingRate": "0.00010000",
             "markPrice": "96000.1"} for i in range(5)]
    assert dl.next_funding_start(page, end) == page[-1]["fundingTime"] + 1
    assert dl.next_funding_start([], end) is None
    assert dl.next_funding_start(page, page[-1]["fundingTime"] + 1) is None      # reached the end
    assert dl.funding_params("BTCUSDT", ms("2025-05-01"), end, 1000) == {
        "symbol": "BTCUSDT", "startTime": ms("2025-05-01"), "endTime": end - 1, "limit": 1000}
    rows = page + [{"symbol": "ETHUSDT", "fundingTime": ms("2025-05-02"), "fundingRate": "-0.00002500", "markPrice": ""}]
    df = dl.funding_frame(rows[::-1], ms("2025-05-01"), end)
    assert df.columns == dl.FUNDING_COLUMNS and df["symbol"].to_list() == ["BTCUSDT"] * 5 + ["ETHUSDT"]
    assert df["funding_time"].head(5).to_list() == [r["fundingTime"] for r in page]
    assert df["mark_price"][-1] is None and df["funding_rate"][-1] == -0.000025
    with pytest.raises(dl.DownloadError, match="twice"):
        dl.funding_frame(rows + rows[:1], ms("2025-05-01"), end)
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.funding_frame(rows, ms("2025-05-02"), end)


# ---- the command against the fake -----------------------------------------------------------------
@pytest.fixture
def data():
    return BinanceData()


@pytest.fixture
def fake(data):
    with FakeBinance(extensions=[data.routes]) as fb:
        yield fb


def test_round_trip_monthly_and_daily_zips_into_the_recorded_layout(fake, data, tmp_path):
    start, end = ms("2025-05-01"), ms("2025-06-02")
    out = tmp_path / "recorded"
    out.mkdir()
    files = dl.plan_kline_files(["BTCUSDT", "ETHUSDT"], "1m", start, end)
    assert [(f.symbol, f.kind, f.label) for f in files] == [
        ("BTCUSDT", "monthly", "2025-05"), ("BTCUSDT", "daily", "2025-06-01"),
        ("ETHUSDT", "monthly", "2025-05"), ("ETHUSDT", "daily", "2025-06-01")]
    for i, f in enumerate(files):          # newer dumps carry a header row, older ones none: both
        serve_klines(data, f, header=i in (0, 3))
    fund = {s: real_funding_rows(s, start, end) for s in ("BTCUSDT", "ETHUSDT")}
    for s, rows in fund.items():
        data.funding[s] = funding_payload(s, rows)
    res = dl.download(["BTCUSDT", "ETHUSDT"], start, end, base_url=fake.rest_url, rest_url=fake.rest_url,
                      out=out, progress=False)
    assert res.period == "2025-05-01-2025-06-02"
    assert sorted(p.name for p in out.iterdir()) == ["funding_2025-05-01-2025-06-02.parquet",
                                                     "perps_1m_2025-05-01-2025-06-02.parquet"]
    got = pl.read_parquet(out / "perps_1m_2025-05-01-2025-06-02.parquet")
    src = {s: real_kline_fields(s, start, end) for s in ("BTCUSDT", "ETHUSDT")}
    assert got.equals(expected_klines(tmp_path, src))
    assert got.height == sum(map(len, src.values())) and got.columns == dl.KLINE_COLUMNS
    # the same values as the shipped set where they overlap
    shipped = pl.read_parquet(RECORDED / "perps_1m_2025-05.parquet").filter(
        pl.col("symbol").is_in(["BTCUSDT", "ETHUSDT"]) & (pl.col("open_time") < end))
    assert got.equals(shipped)
    # the real data start 2025-05-04 15:37: the minutes before are reported, not invented
    first = int(got["open_time"].min())
    assert [(g.symbol, g.first_missing, g.bars) for g in res.gaps] == [
        ("BTCUSDT", start, (first - start) // STEP), ("ETHUSDT", start, (first - start) // STEP)]
    fgot = pl.read_parquet(out / "funding_2025-05-01-2025-06-02.parquet")
    assert fgot.equals(expected_funding(tmp_path, fund)) and fgot.height == sum(map(len, fund.values()))
    # the loaders read them as they read the shipped files
    from executor.funding_source import load_funding_history
    from models.dataset import load_klines
    assert load_klines(out / "perps_1m_2025-05-01-2025-06-02.parquet", ["ETHUSDT"]).height == len(src["ETHUSDT"])
    hist = load_funding_history([out / "funding_2025-05-01-2025-06-02.parquet"])
    assert len(hist.by_symbol["BTCUSDT"]) == len(fund["BTCUSDT"])
    # a second download of the same period does not overwrite it
    with pytest.raises(dl.DownloadError, match="already exist"):
        dl.download(["BTCUSDT"], start, end, base_url=fake.rest_url, rest_url=fake.rest_url, out=out, progress=False)


def test_checksum_mismatch_is_refused_and_nothing_is_written(fake, data, tmp_path):
    start, end = ms("2025-05-10"), ms("2025-05-12")
    files = dl.plan_kline_files(["BTCUSDT"], "1m", start, end)
    serve_klines(data, files[0], header=True)
    wrong = hashlib.sha256(b"another file").hexdigest()
    serve_klines(data, files[1], header=False, checksum=f"{wrong}  {files[1].name}\n")
    data.funding["BTCUSDT"] = funding_payload("BTCUSDT", real_funding_rows("BTCUSDT", start, end))
    with pytest.raises(dl.ChecksumMismatch) as exc:
        dl.download(["BTCUSDT"], start, end, base_url=fake.rest_url, rest_url=fake.rest_url, out=tmp_path,
                    progress=False)
    actual = hashlib.sha256(data.files[files[1].path]).hexdigest()
    assert (exc.value.name, exc.value.expected, exc.value.actual) == (files[1].name, wrong, actual)
    assert list(tmp_path.iterdir()) == []


def test_missing_month_is_reported_by_name_through_the_cli(fake, data, tmp_path, capsys):
    from infra.cli import main
    start, end = ms("2025-04-01"), ms("2025-06-01")
    files = dl.plan_kline_files(["BTCUSDT"], "1m", start, end)
    assert [f.label for f in files] == ["2025-04", "2025-05"]
    serve_klines(data, files[1], header=True)           # April is not served: 404, as for a month not out yet
    code = main(["data", "download", "--symbols", "BTCUSDT", "--start", "2025-04-01", "--end", "2025-06-01",
                 "--base-url", fake.rest_url, "--rest-url", fake.rest_url, "--out", str(tmp_path), "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "BTCUSDT-1m-2025-04.zip" in err and "404" in err and "--daily" in err and "Nothing written" in err
    assert "2025-05.zip" not in err
    assert list(tmp_path.iterdir()) == []
    assert not any("fundingRate" in p for p, _ in data.requests)      # stopped before the funding


def test_cli_download_writes_and_reports(fake, data, tmp_path, capsys):
    from infra.cli import main
    start, end = ms("2025-05-10"), ms("2025-05-11")
    f = dl.plan_kline_files(["ETHUSDT"], "1m", start, end)[0]
    n = serve_klines(data, f, header=True)
    rows = real_funding_rows("ETHUSDT", start, end)
    data.funding["ETHUSDT"] = funding_payload("ETHUSDT", rows)
    code = main(["data", "download", "--symbols", "ETHUSDT", "--start", "2025-05-10", "--end", "2025-05-11",
                 "--base-url", fake.rest_url, "--rest-url", fake.rest_url, "--out", str(tmp_path), "--period", "eth-day",
                 "--no-progress"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert pl.read_parquet(tmp_path / "perps_1m_eth-day.parquet").height == n == 1440
    assert pl.read_parquet(tmp_path / "funding_eth-day.parquet").height == len(rows) == 3
    assert "1 zips verified" in out and f"{n:,} bars" in out
    with pytest.raises(SystemExit) as exc:       # argparse: a period with "_" is refused before anything runs
        main(["data", "download", "--symbols", "ETHUSDT", "--start", "2025-05-10", "--end", "2025-05-11",
              "--period", "bad_name"])
    assert exc.value.code == 2


def test_funding_pages_past_1000_rows_with_pages_capped_below_the_limit(fake, data):
    # LAYERUSDT (4 h, then hourly) + ENAUSDT (4 h): 1,229 real settlements; the fake answers at most
    # 100 per page although the client asks for 1000, so a short page must not end the history
    data.page_max = 100
    start, end = ms("2025-04-01"), ms("2025-06-04")
    fund = {s: real_funding_rows(s, start, end) for s in ("LAYERUSDT", "ENAUSDT")}
    assert sum(map(len, fund.values())) > 1000 and len(fund["LAYERUSDT"]) > 8 * data.page_max
    for s, rows in fund.items():
        data.funding[s] = funding_payload(s, rows)
    with httpx.Client() as client:
        got = dl.fetch_funding(dl._Http(client), fake.rest_url, ["ENAUSDT", "LAYERUSDT"], start, end)
    assert [(r["symbol"], r["fundingTime"]) for r in got] == \
        [(s, int(t)) for s in ("ENAUSDT", "LAYERUSDT") for t, _, _ in fund[s]]
    # each page starts one ms after the previous page's last settlement; the last page is empty
    for s in ("ENAUSDT", "LAYERUSDT"):
        asked = [int(q["startTime"]) for p, q in data.requests if p == dl.FUNDING_PATH and q["symbol"] == s]
        times = [int(t) for t, _, _ in fund[s]]
        page_ends = sorted(set(range(data.page_max - 1, len(times), data.page_max)) | {len(times) - 1})
        assert asked == [start] + [times[i] + 1 for i in page_ends]
        assert all(int(q["limit"]) == 1000 and int(q["endTime"]) == end - 1
                   for p, q in data.requests if p == dl.FUNDING_PATH and q["symbol"] == s)


def test_header_csv_prices_are_floats_even_when_the_first_rows_are_whole_numbers():
    # a coin quoted in whole numbers for more rows than polars infers from must not fail on its first decimal
    from ingest.replay import read_kline_csv
    t0 = ms("2025-05-01")
    rows = [f"{t0 + i * STEP},7,7,7,7,5,{t0 + i * STEP + STEP - 1},35,1,2,14,0" for i in range(10_001)]
    rows.append(f"{t0 + 10_001 * STEP},7.5,7.5,7.5,7.5,5,{t0 + 10_002 * STEP - 1},37.5,1,2,15,0")
    df = read_kline_csv((DUMP_HEADER + "\n" + "\n".join(rows) + "\n").encode(), "x.csv")
    assert df.height == 10_002 and df["open"][-1] == 7.5 and df.schema["open"] == pl.Float64
    assert df["trades"].sum() == 10_002                    # the dump header's `count` is read as trades


def test_rate_limit_answers_wait_their_retry_after_and_the_request_is_repeated(fake, data):
    start, end = ms("2025-05-10"), ms("2025-05-12")
    rows = real_funding_rows("BTCUSDT", start, end)
    data.funding["BTCUSDT"] = funding_payload("BTCUSDT", rows)
    data.fail_funding = [(429, "3"), (503, "")]
    slept = []
    with httpx.Client() as client:
        got = dl.fetch_funding(dl._Http(client, sleep=slept.append), fake.rest_url, ["BTCUSDT"], start, end)
    assert [r["fundingTime"] for r in got] == [int(t) for t, _, _ in rows]
    assert slept[0] == 3.0 and len(slept) == 2                     # Retry-After, then a backoff for the 503
    data.fail_funding = [(418, "1")] * 5
    with httpx.Client() as client, pytest.raises(dl.DownloadError, match="failed 5 times"):
        dl.fetch_funding(dl._Http(client, sleep=lambda s: None), fake.rest_url, ["BTCUSDT"], start, end)
