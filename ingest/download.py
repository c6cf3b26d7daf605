"""`smc data download`: real Binance USD-M klines and funding into the repo's recorded layout.

Sources (the ones freqtrade's `download-data` and Binance's own scripts use):
  * data.binance.vision kline dumps: one zip per symbol and whole UTC month,
    `data/futures/um/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-YYYY-MM.zip`, or per day,
    `data/futures/um/daily/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-YYYY-MM-DD.zip`, each beside a
    `<name>.zip.CHECKSUM` holding `<sha256>  <name>.zip` (sha256sum's format). The zip holds one CSV in
    Binance's 12-column kline layout, without a header row in older dumps, with one in newer ones
    (ingest.replay.read_kline_csv reads both).
  * GET /fapi/v1/fundingRate (symbol, startTime, endTime, limit <= 1000): settlements in ascending
    order, at most `limit` from startTime on, so the history is paged by startTime = last fundingTime + 1
    until an empty page (weight: 500 per 5 min per IP, shared with fundingInfo; 429/418 wait Retry-After).

Output (ingest.pack_recorded.write_verified: zstd 19, read back and compared before it is put in place):
  `perps_1m_<period>.parquet` (symbol, open_time, open, high, low, close, volume, close_time) and
  `funding_<period>.parquet` (symbol, funding_time, funding_rate, mark_price), the names
  models.dataset, models.train.funding_for and executor.funding_source look for. mark_price here is
  Binance's fundingRate.markPrice (the mark price the settlement used; null where Binance gives none),
  not the open of the 8h mark candle that the shipped funding files carry (see ingest/recorded/SOURCES.md).

Checks before anything is written: every zip's sha256 equals its CHECKSUM; every bar is on the
interval grid inside its file's day or month, and no (symbol, open_time) appears twice. Missing bars
are REPORTED (gaps), never filled. A file Binance has not published (404) stops the download with
its name; so does a checksum mismatch (file, expected, actual hash): nothing is written then.

Functional core: plan_kline_files, parse_checksum/verify_checksum, klines_from_zip, find_gaps,
funding_params/next_funding_start/funding_frame, default_period. The shell (`download`) is httpx.
"""
from __future__ import annotations

import calendar
import hashlib
import io
import re
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import polars as pl

from ingest.pack_recorded import FUNDING_SCHEMA, KLINE_SCHEMA, RECORDED, write_verified
from ingest.replay import ReplayError, read_kline_csv
from schemas import interval_ms

DATA_URL = "https://data.binance.vision"
REST_URL = "https://fapi.binance.com"
FUNDING_PATH = "/fapi/v1/fundingRate"
FUNDING_MAX_LIMIT = 1000             # Binance's maximum page size for fundingRate
KLINE_COLUMNS = ["symbol", *KLINE_SCHEMA]
FUNDING_COLUMNS = ["symbol", *FUNDING_SCHEMA]
DAY_MS = 86_400_000
# a period name goes into perps_1m_<period>.parquet; models.train.period_of splits the stem on the
# last "_", so a name with "_" (or a path separator) would not find its funding file
PERIOD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


class DownloadError(RuntimeError):
    """The download cannot give the requested data as it is (the message says which file and why)."""


class ChecksumMismatch(DownloadError):
    def __init__(self, name: str, expected: str, actual: str):
        super().__init__(f"{name}: sha256 {actual} does not match its CHECKSUM file ({expected}); "
                         "the download is corrupt or was replaced: nothing written")
        self.name, self.expected, self.actual = name, expected, actual


class NotPublished(DownloadError):
    """One or more dump files answer 404."""


# ---- pure: what to fetch ------------------------------------------------------------------------
@dataclass(frozen=True)
class KlineFile:
    symbol: str
    interval: str
    kind: str          # "monthly" or "daily"
    label: str         # YYYY-MM or YYYY-MM-DD
    start: int         # ms UTC, first open_time the file can hold
    end: int           # ms UTC, exclusive

    @property
    def name(self) -> str:
        return f"{self.symbol}-{self.interval}-{self.label}.zip"

    @property
    def path(self) -> str:
        return f"data/futures/um/{self.kind}/klines/{self.symbol}/{self.interval}/{self.name}"

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _month_start(year: int, month: int) -> int:
    return _ms(datetime(year, month, 1, tzinfo=timezone.utc))


def plan_kline_files(symbols: Iterable[str], interval: str, start: int, end: int,
                     monthly: bool = True) -> list[KlineFile]:
    """The dump files covering [start, end) per symbol: a monthly zip for every UTC month wholly inside
    the range (unless monthly=False), daily zips for the days of partial months (a day only partly
    inside is fetched whole and cut later). Ordered by symbol, then time."""
    if end <= start:
        raise DownloadError(f"empty range: end {_utc(end):%Y-%m-%d %H:%M} is not after start {_utc(start):%Y-%m-%d %H:%M}")
    syms = [s.strip().upper() for s in symbols if s and s.strip()]
    if not syms:
        raise DownloadError("no symbols given")
    spans: list[tuple[str, str, int, int]] = []
    t = start - start % DAY_MS
    while t < end:
        d = _utc(t)
        m0 = _month_start(d.year, d.month)
        m1 = m0 + calendar.monthrange(d.year, d.month)[1] * DAY_MS
        if monthly and t == m0 and start <= m0 and m1 <= end:
            spans.append(("monthly", f"{d:%Y-%m}", m0, m1))
            t = m1
        else:
            spans.append(("daily", f"{d:%Y-%m-%d}", t, t + DAY_MS))
            t += DAY_MS
    return [KlineFile(s, interval, kind, label, a, b) for s in syms for kind, label, a, b in spans]


def default_period(start: int, end: int) -> str:
    """YYYY-MM for exactly one whole UTC month (the shipped files' style), else <start>-<end> with end
    exclusive, as the dates were given (YYYY-MM-DD, with THHMM when not midnight)."""
    s = _utc(start)
    if s.day == 1 and start % DAY_MS == 0:
        nxt = _month_start(s.year + (s.month == 12), s.month % 12 + 1)
        if end == nxt:
            return f"{s:%Y-%m}"

    def fmt(ms: int) -> str:
        return f"{_utc(ms):%Y-%m-%d}" if ms % DAY_MS == 0 else f"{_utc(ms):%Y-%m-%dT%H%M}"
    return f"{fmt(start)}-{fmt(end)}"


def check_period(name: str) -> str:
    if not PERIOD_RE.match(name):
        raise DownloadError(f"--period {name!r}: use letters, digits, '-' and '.' only (it becomes "
                            "perps_1m_<period>.parquet; '_' would break the funding file look-up)")
    return name


# ---- pure: checking and parsing what came back -------------------------------------------------
def parse_checksum(text: str) -> tuple[str, str]:
    """(sha256 hex, file name) from a .CHECKSUM file: `<sha256>  <name>` (sha256sum's format)."""
    parts = text.strip().split()
    if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
        raise DownloadError(f"CHECKSUM file is not '<sha256>  <name>': {text.strip()[:120]!r}")
    return parts[0].lower(), parts[1].lstrip("*")


def verify_checksum(name: str, data: bytes, checksum_text: str) -> str:
    """The zip's sha256 when it equals the CHECKSUM's; ChecksumMismatch (file, expected, actual) if not."""
    expected, listed = parse_checksum(checksum_text)
    if listed != name:
        raise DownloadError(f"{name}: its CHECKSUM file names {listed!r}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumMismatch(name, expected, actual)
    return actual


def klines_from_zip(data: bytes, file: KlineFile) -> pl.DataFrame:
    """The zip's CSV as KLINE_COLUMNS rows (String/Int64/Float64), checked to lie on the interval grid
    inside the file's day or month, with close_time = open_time + interval - 1."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise DownloadError(f"{file.name}: expected one CSV inside, found {zf.namelist()}")
            text = zf.read(members[0])
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{file.name}: not a zip file ({exc})") from None
    try:
        raw = read_kline_csv(text, f"{file.name}:{members[0]}")
    except ReplayError as exc:
        raise DownloadError(str(exc)) from None
    missing = [c for c in KLINE_SCHEMA if c not in raw.columns]
    if missing:
        raise DownloadError(f"{file.name}: the CSV lacks columns {missing} (has {raw.columns})")
    df = raw.select([pl.lit(file.symbol, pl.Utf8).alias("symbol"),
                     *[pl.col(c).cast(t) for c, t in KLINE_SCHEMA.items()]])
    step = interval_ms(file.interval)
    bad = df.filter((pl.col("open_time") < file.start) | (pl.col("open_time") >= file.end)
                    | (pl.col("open_time") % step != 0) | (pl.col("close_time") != pl.col("open_time") + step - 1))
    if bad.height:
        ot = bad["open_time"][0]
        raise DownloadError(f"{file.name}: {bad.height} rows off the {file.interval} grid of {file.label} "
                            f"(first open_time {ot}; Binance USD-M dumps use milliseconds)")
    return df


@dataclass(frozen=True)
class Gap:
    symbol: str
    first_missing: int    # open_time of the first missing bar
    bars: int             # how many bars are missing from there

    def describe(self, step: int) -> str:
        last = self.first_missing + (self.bars - 1) * step
        return (f"{self.symbol}: {self.bars} bar(s) missing, {_utc(self.first_missing):%Y-%m-%d %H:%M} .. "
                f"{_utc(last):%Y-%m-%d %H:%M} UTC")


def find_gaps(df: pl.DataFrame, step: int, start: int, end: int, symbols: Iterable[str]) -> list[Gap]:
    """Bars missing from [start, end) per symbol (inside, at either edge, or all of them); a
    (symbol, open_time) present twice is a DownloadError. df: KLINE_COLUMNS rows, any order."""
    dup = df.select(["symbol", "open_time"]).is_duplicated()
    if dup.any():
        row = df.filter(dup).row(0, named=True)
        raise DownloadError(f"{row['symbol']} open_time {row['open_time']} appears more than once in the dumps")
    first = -(-start // step) * step
    last = -(-end // step) * step            # one past the last open_time wanted, on the grid
    gaps: list[Gap] = []
    for sym in symbols:
        t = np.sort(df.filter(pl.col("symbol") == sym)["open_time"].to_numpy())
        # each present bar and the boundaries: a hole is where neighbours are more than one step apart
        edges = np.concatenate(([first - step], t, [last]))
        jump = np.diff(edges)
        for i in np.flatnonzero(jump > step):
            gaps.append(Gap(sym, int(edges[i] + step), int(jump[i] // step - 1)))
    return gaps


def funding_params(symbol: str, start: int, end: int, limit: int = FUNDING_MAX_LIMIT) -> dict:
    """Query of the first fundingRate page for settlements in [start, end) (endTime is inclusive)."""
    return {"symbol": symbol, "startTime": start, "endTime": end - 1, "limit": limit}


def next_funding_start(page: list[dict], end: int) -> int | None:
    """startTime of the next page, None when the history of [start, end) is complete. Binance answers
    at most `limit` settlements from startTime on, ascending; a page shorter than the limit asked is
    NOT taken as the last one (a server may cap pages lower; that would silently lose settlements):
    the history ends at an empty page or when the next startTime reaches `end` (one request more
    per symbol than strictly needed when the server honours the limit)."""
    if not page:
        return None
    nxt = int(page[-1]["fundingTime"]) + 1
    return nxt if nxt < end else None


def funding_frame(rows: list[dict], start: int, end: int) -> pl.DataFrame:
    """fundingRate rows -> FUNDING_COLUMNS (markPrice "" or absent -> null), sorted, checked strictly
    increasing per symbol and inside [start, end)."""
    def mark(r):
        v = r.get("markPrice")
        return float(v) if v not in (None, "") else None
    df = pl.DataFrame({"symbol": [str(r["symbol"]) for r in rows],
                       "funding_time": [int(r["fundingTime"]) for r in rows],
                       "funding_rate": [float(r["fundingRate"]) for r in rows],
                       "mark_price": [mark(r) for r in rows]},
                      schema={"symbol": pl.Utf8, **FUNDING_SCHEMA}).sort(["symbol", "funding_time"])
    outside = df.filter((pl.col("funding_time") < start) | (pl.col("funding_time") >= end))
    if outside.height:
        raise DownloadError(f"fundingRate answered {outside.height} settlement(s) outside the range asked, "
                            f"e.g. {outside.row(0)}")
    dup = df.select(["symbol", "funding_time"]).is_duplicated()
    if dup.any():
        raise DownloadError(f"fundingRate answered a settlement twice: {df.filter(dup).row(0)}")
    return df


# ---- the shell ---------------------------------------------------------------------------------
@dataclass
class DownloadResult:
    period: str
    files: list[KlineFile]
    klines: pl.DataFrame
    funding: pl.DataFrame
    gaps: list[Gap]
    written: list[tuple[str, int, str]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


class _Http:
    """GET with bounded retries: 429/418 wait their Retry-After (ingest.rest.retry_after_s), 5xx and
    connection errors back off; 404 and other 4xx are returned to the caller, which names the file."""

    def __init__(self, client, attempts: int = 5, sleep: Callable[[float], None] = time.sleep):
        self.client, self.attempts, self.sleep = client, attempts, sleep

    def get(self, url: str, params: dict | None = None):
        import httpx
        from ingest.rest import retry_after_s
        last = ""
        for attempt in range(self.attempts):
            try:
                r = self.client.get(url, params=params)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                self.sleep(min(10.0, 0.5 * 2 ** attempt))
                continue
            if r.status_code in (429, 418):
                last = f"HTTP {r.status_code}"
                self.sleep(retry_after_s(r.status_code, r.headers.get("Retry-After")))
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                self.sleep(min(10.0, 0.5 * 2 ** attempt))
                continue
            return r
        raise DownloadError(f"GET {url} failed {self.attempts} times (last: {last})")


def _not_published(files: list[KlineFile], base_url: str) -> str:
    names = ", ".join(f.name for f in files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
    monthly = any(f.kind == "monthly" for f in files)
    return (f"not published on {base_url} (404): {names}. Daily files appear the day after, monthly ones in "
            "the first days of the next month; a symbol has none before its listing. "
            + ("Use --daily to fetch a month's daily files instead, or " if monthly else "")
            + "move --start/--end inside what is published. Nothing written.")


def fetch_funding(http: "_Http", rest_url: str, symbols: list[str], start: int, end: int,
                  limit: int = FUNDING_MAX_LIMIT, on_symbol: Callable[[str], None] | None = None) -> list[dict]:
    """Every fundingRate row of `symbols` in [start, end), page by page (next_funding_start)."""
    rows: list[dict] = []
    for sym in symbols:
        params = funding_params(sym, start, end, limit)
        while True:
            r = http.get(f"{rest_url.rstrip('/')}{FUNDING_PATH}", params=params)
            if r.status_code != 200:
                raise DownloadError(f"GET {FUNDING_PATH} {sym}: HTTP {r.status_code} {r.text[:200]}")
            page = r.json()
            if not isinstance(page, list):
                raise DownloadError(f"GET {FUNDING_PATH} {sym}: expected a list, got {str(page)[:200]}")
            rows += page
            nxt = next_funding_start(page, end)
            if nxt is None:
                break
            params = dict(params, startTime=nxt)
        if on_symbol is not None:
            on_symbol(sym)
    return rows


def download(symbols: list[str], start: int, end: int, interval: str = "1m", base_url: str = DATA_URL,
             rest_url: str = REST_URL, out: str | Path = RECORDED, period: str | None = None,
             monthly: bool = True, overwrite: bool = False, funding_limit: int = FUNDING_MAX_LIMIT,
             progress: bool = True, client=None, sleep: Callable[[float], None] = time.sleep) -> DownloadResult:
    """Fetch, verify and check everything first; write the two Parquet files only when all of it holds."""
    import httpx
    step = interval_ms(interval)
    if not 1 <= funding_limit <= FUNDING_MAX_LIMIT:
        raise DownloadError(f"funding page limit {funding_limit}: Binance allows 1..{FUNDING_MAX_LIMIT}")
    period = check_period(period or default_period(start, end))
    out = Path(out)
    targets = [out / f"perps_{interval}_{period}.parquet", out / f"funding_{period}.parquet"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise DownloadError(f"{', '.join(existing)} already exist(s): choose another --period or pass --overwrite")
    if not out.is_dir():
        raise DownloadError(f"--out {out}: no such directory")
    files = plan_kline_files(symbols, interval, start, end, monthly)
    syms = sorted({f.symbol for f in files})
    own = client is None
    client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)
    http = _Http(client, sleep=sleep)
    bar = None
    try:
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            bar.start()
            task = bar.add_task("klines zips", total=len(files))
        frames, missing = [], []
        for f in files:
            r = http.get(f.url(base_url))
            if r.status_code == 404:
                missing.append(f)
            elif r.status_code != 200:
                raise DownloadError(f"{f.url(base_url)}: HTTP {r.status_code} {r.text[:200]}")
            else:
                c = http.get(f.url(base_url) + ".CHECKSUM")
                if c.status_code != 200:
                    raise DownloadError(f"{f.name}.CHECKSUM: HTTP {c.status_code}; a zip is not used unverified")
                verify_checksum(f.name, r.content, c.text)
                frames.append(klines_from_zip(r.content, f))
            if bar is not None:
                bar.update(task, advance=1, description=f"klines {f.name}")
        if missing:
            raise NotPublished(_not_published(missing, base_url))
        klines = (pl.concat(frames) if frames else pl.DataFrame(schema={"symbol": pl.Utf8, **KLINE_SCHEMA}))
        klines = klines.filter((pl.col("open_time") >= start) & (pl.col("open_time") < end)).sort(["symbol", "open_time"])
        gaps = find_gaps(klines, step, start, end, syms)
        if bar is not None:
            ftask = bar.add_task("funding", total=len(syms))
        rows = fetch_funding(http, rest_url, syms, start, end, funding_limit,
                             on_symbol=(lambda sym: bar.update(ftask, advance=1, description=f"funding {sym}"))
                             if bar is not None else None)
        funding = funding_frame(rows, start, end)
    finally:
        if bar is not None:
            bar.stop()
        if own:
            client.close()
    if klines.height == 0:
        raise DownloadError("the dumps hold no bars inside the range: nothing written")
    res = DownloadResult(period, files, klines.select(KLINE_COLUMNS), funding.select(FUNDING_COLUMNS), gaps)
    res.written = write_verified({targets[0]: res.klines, targets[1]: res.funding})
    res.paths = targets
    return res
