"""One log format for every process: ingest, worker (processors), executor, sink (audit).

SMC_LOG_FORMAT=text (the default), for a terminal:
    2026-12-03 10:40:01,123 INFO smc.ingest: 7 shards connected
SMC_LOG_FORMAT=json, for files and log collectors: one JSON object per line,
    {"ts": "2026-12-03T10:40:01.123Z", "level": "INFO", "logger": "smc.ingest", "process": "ingest",
     "run": "<SMC_NAMESPACE>", "symbol": "BTCUSDT", "msg": "...", "exc": "Traceback (most recent call last): ..."}
  `symbol` only when the call gives it (`log.info("gap", extra={"symbol": s})`), `exc` only with exc_info.
The live supervisor (infra/live.py) sets json for its children, so their log files hold no ANSI colour codes.

Secrets: the formatters write the fields above and nothing else: never the record's other attributes,
the environment or the settings. The values of the secret environment variables (BINANCE_API_KEY,
BINANCE_API_SECRET, any *_SECRET / *_API_KEY / *_TOKEN / *_PASSWORD) are replaced by `***` in the message
and the traceback, in both formats, should one ever be put in a log call by mistake.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Mapping

import orjson

FORMAT_ENV = "SMC_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROCESSES = ("ingest", "worker", "executor", "sink")
REDACTED = "***"

_SECRET_NAMES = ("BINANCE_API_KEY", "BINANCE_API_SECRET")
_SECRET_SUFFIXES = ("_SECRET", "_API_KEY", "_TOKEN", "_PASSWORD")
_MIN_SECRET_LEN = 6          # shorter values ("1", "yes") would blank ordinary words, and guard nothing


def log_format(env: Mapping[str, str] | None = None) -> str:
    """"json" or "text" from SMC_LOG_FORMAT (case and spaces ignored); anything else is an error."""
    value = (os.environ if env is None else env).get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def secret_values(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The values to keep out of logs, longest first (a secret containing another is replaced whole)."""
    env = os.environ if env is None else env
    found = {v for k, v in env.items()
             if (k in _SECRET_NAMES or k.upper().endswith(_SECRET_SUFFIXES)) and len(v) >= _MIN_SECRET_LEN}
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class TextFormatter(logging.Formatter):
    """The terminal format, secrets replaced."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = secret_values() if secrets is None else secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside the message or traceback are escaped)."""

    def __init__(self, process: str, run: str = "", secrets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.process = process
        self.run = run
        self.secrets = secret_values() if secrets is None else secrets

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")
        out: dict[str, object] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname,
                                  "logger": record.name, "process": self.process, "run": self.run}
        symbol = getattr(record, "symbol", None)
        if symbol is not None:
            out["symbol"] = str(symbol)
        out["msg"] = redact(record.getMessage(), self.secrets)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info), self.secrets)
        elif record.exc_text:
            out["exc"] = redact(record.exc_text, self.secrets)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info), self.secrets)
        try:
            return orjson.dumps(out).decode()
        except TypeError:            # a lone surrogate in the message: orjson refuses it, json escapes it
            return json.dumps(out)


class RedactSecrets(logging.Filter):
    """For a handler whose formatter is not ours (Faust's in text mode): renders the message and the
    traceback of each record with the secrets replaced, before that formatter sees them."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.secrets = secret_values() if secrets is None else secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.secrets)
        return True


def _chosen_format() -> str:
    """SMC_LOG_FORMAT, or text with one line on stderr when it names no format (a typo must not stop a
    process from starting, nor go unnoticed)."""
    try:
        return log_format()
    except ValueError as exc:
        print(f"{exc}; logging as text", file=sys.stderr)
        return "text"


def make_formatter(process: str, run: str = "", fmt: str | None = None) -> logging.Formatter:
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, not {process!r}")
    fmt = _chosen_format() if fmt is None else fmt
    return JsonFormatter(process, run) if fmt == "json" else TextFormatter()


def setup_logging(process: str, level: int | str = logging.INFO, run: str = "",
                  stream: IO[str] | None = None) -> logging.Handler | None:
    """The root logger of this process: one handler on stderr (or `stream`) in the SMC_LOG_FORMAT format.
    In json, an uncaught exception is logged as a JSON line too (then Python exits as usual).

    Like logging.basicConfig, it leaves a root logger that has handlers from elsewhere alone (pytest's,
    when a test calls an entry point's main() in its own process) and returns None then; a handler of
    an earlier call is replaced."""
    root = logging.getLogger()
    if any(not getattr(h, "_smc_logs", False) for h in root.handlers):
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(process, run))
    handler._smc_logs = True         # type: ignore[attr-defined]  # ours: a later call replaces it
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if isinstance(handler.formatter, JsonFormatter):
        def log_uncaught(kind, exc, tb):
            if issubclass(kind, KeyboardInterrupt):
                sys.__excepthook__(kind, exc, tb)
                return
            logging.getLogger(f"smc.{process}").critical("uncaught exception", exc_info=(kind, exc, tb))
        sys.excepthook = log_uncaught
    return handler


def apply_format(logger: logging.Logger, process: str, run: str = "") -> None:
    """For a logger whose handlers a framework made (Faust's Worker): json replaces their formatters;
    text keeps them (the framework's terminal format) and only keeps the secrets out."""
    if _chosen_format() == "json":
        formatter = make_formatter(process, run, "json")
        for h in logger.handlers:
            h.setFormatter(formatter)
    else:
        for h in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in h.filters):
                h.addFilter(RedactSecrets())
