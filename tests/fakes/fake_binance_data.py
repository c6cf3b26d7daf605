"""Routes for FakeBinance that serve Binance's public-data formats: data.binance.vision kline zips with
their `.CHECKSUM` files, and GET /fapi/v1/fundingRate pages.

    data = BinanceData()
    data.add_zip("data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-05-10.zip", csv_bytes)
    data.funding["BTCUSDT"] = [{"symbol": "BTCUSDT", "fundingTime": ..., "fundingRate": "...", "markPrice": "..."}]
    with FakeBinance(extensions=[data.routes]) as fb:   # fb.rest_url serves both the dumps and the REST
        ...

A zip holds one CSV member named like the zip (`BTCUSDT-1m-2025-05-10.csv`), as Binance's do; the
CHECKSUM is `<sha256>  <zip name>` (sha256sum's output). A path not added answers 404 with the S3
`NoSuchKey` XML body data.binance.vision gives. fundingRate answers like Binance: ascending, at most
`limit` rows from startTime on (endTime inclusive); `page_max` caps pages below the limit asked,
silently (to test a client that must not take a short page for the last one).
"""
from __future__ import annotations

import hashlib
import io
import zipfile

import orjson
from aiohttp import web

DUMP_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
               "taker_buy_quote_volume,ignore")
NO_SUCH_KEY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
               b'<Message>The specified key does not exist.</Message></Error>')


def make_zip(member: str, csv_bytes: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, csv_bytes)
    return buf.getvalue()


def checksum_text(data: bytes, name: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


class BinanceData:
    def __init__(self, page_max: int = 1000):
        self.files: dict[str, bytes] = {}
        self.funding: dict[str, list[dict]] = {}
        self.page_max = page_max
        self.requests: list[tuple[str, dict]] = []
        self.fail_funding: list[tuple[int, str]] = []    # (status, Retry-After) answers for the next requests

    def add_zip(self, path: str, csv_bytes: bytes, checksum: str | None = None) -> bytes:
        """Serve a zip of csv_bytes at `path` and its CHECKSUM (the true one unless `checksum` is given)."""
        name = path.rsplit("/", 1)[-1]
        data = make_zip(name[:-4] + ".csv", csv_bytes)
        self.files[path] = data
        self.files[path + ".CHECKSUM"] = (checksum if checksum is not None else checksum_text(data, name)).encode()
        return data

    def routes(self, _fake=None) -> list:
        return [web.get("/data/{tail:.+}", self._data), web.get("/fapi/v1/fundingRate", self._funding_rate)]

    async def _data(self, request: web.Request) -> web.Response:
        path = request.path.lstrip("/")
        self.requests.append((request.path, {}))
        body = self.files.get(path)
        if body is None:
            return web.Response(status=404, body=NO_SUCH_KEY, content_type="application/xml")
        ctype = "application/zip" if path.endswith(".zip") else "text/plain"
        return web.Response(body=body, content_type=ctype)

    async def _funding_rate(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append((request.path, q))
        if self.fail_funding:
            status, retry_after = self.fail_funding.pop(0)
            return web.json_response({"code": -1003, "msg": "Too many requests."}, status=status,
                                     headers={"Retry-After": retry_after})
        try:
            limit = int(q.get("limit", 100))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return web.json_response({"code": -1102, "msg": "Mandatory parameter malformed."}, status=400)
        if not 1 <= limit <= 1000:
            return web.json_response({"code": -1130, "msg": "Invalid limit."}, status=400)
        rows = sorted(self.funding.get(q.get("symbol", ""), []), key=lambda r: r["fundingTime"])
        rows = [r for r in rows if (start is None or r["fundingTime"] >= start) and (end is None or r["fundingTime"] <= end)]
        return web.Response(body=orjson.dumps(rows[:min(limit, self.page_max)]), content_type="application/json")
