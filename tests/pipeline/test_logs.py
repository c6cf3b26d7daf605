"""infra/logs.py: one JSON object per line with the agreed fields, tracebacks included, secrets never printed;
entry points started with SMC_LOG_FORMAT=json write JSON lines."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from infra.logs import (REDACTED, JsonFormatter, TextFormatter, apply_format, log_format, secret_values,
                        setup_logging)
from infra.settings import REPO_ROOT, Settings

KEY = "SMCKEYzzLOGCANARYk3y0123456789abcdefXYZ"
SECRET = "SMCSECRETzzLOGCANARYs3cr3t9876543210QRS"


@pytest.fixture
def bare_root():
    """Call it in the test body (pytest adds its capture handlers to the root logger after the fixtures):
    the root logger without those handlers (setup_logging, like basicConfig, leaves foreign ones alone);
    handlers, level and excepthook restored afterwards."""
    root = logging.getLogger()
    saved: list[logging.Handler] = []
    level, hook = root.level, sys.excepthook

    def clear() -> logging.Logger:
        for h in list(root.handlers):
            saved.append(h)
            root.removeHandler(h)
        return root
    yield clear
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    sys.excepthook = hook


def _record(msg="bar closed %s", args=("BTCUSDT",), exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("smc.ingest", logging.WARNING, __file__, 10, msg, args, exc_info)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_line_has_the_fields():
    rec = _record(symbol="ETHUSDT")
    line = JsonFormatter("ingest", run="t-run-1", secrets=()).format(rec)
    assert "\n" not in line
    d = json.loads(line)
    assert list(d) == ["ts", "level", "logger", "process", "run", "symbol", "msg"]
    assert (d["level"], d["logger"], d["process"], d["run"], d["symbol"], d["msg"]) == \
        ("WARNING", "smc.ingest", "ingest", "t-run-1", "ETHUSDT", "bar closed BTCUSDT")
    ts = datetime.fromisoformat(d["ts"].replace("Z", "+00:00"))
    assert d["ts"].endswith("Z") and ts.tzinfo == timezone.utc
    assert abs(ts.timestamp() - rec.created) < 0.001


def test_json_without_symbol_and_multiline_message_stays_one_line():
    d_line = JsonFormatter("worker", secrets=()).format(_record("two\nlines", ()))
    assert "\n" not in d_line
    d = json.loads(d_line)
    assert "symbol" not in d and d["msg"] == "two\nlines" and d["run"] == "" and d["process"] == "worker"


def test_json_renders_the_exception():
    try:
        {}["missing"]
    except KeyError:
        rec = _record("failed", (), exc_info=sys.exc_info())
    d = json.loads(JsonFormatter("executor", secrets=()).format(rec))
    assert d["msg"] == "failed"
    assert d["exc"].startswith("Traceback (most recent call last):") and "KeyError: 'missing'" in d["exc"]


def test_unknown_process_and_format_are_refused():
    from infra.logs import make_formatter
    with pytest.raises(ValueError, match="process must be one of"):
        make_formatter("sinks")
    assert log_format({"SMC_LOG_FORMAT": " JSON "}) == "json" and log_format({}) == "text"
    with pytest.raises(ValueError, match="SMC_LOG_FORMAT must be one of text, json, not 'xml'"):
        log_format({"SMC_LOG_FORMAT": "xml"})


def test_setup_logging_json_to_a_stream(bare_root, monkeypatch):
    bare_root()
    monkeypatch.setenv("SMC_LOG_FORMAT", "json")
    out = io.StringIO()
    assert setup_logging("sink", logging.INFO, run="t-ns", stream=out) is not None
    log = logging.getLogger("smc.audit")
    log.info("inserted %d rows", 5, extra={"symbol": "SOLUSDT"})
    log.debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert (d["process"], d["run"], d["symbol"], d["msg"], d["level"]) == ("sink", "t-ns", "SOLUSDT", "inserted 5 rows", "INFO")


def test_setup_logging_leaves_a_configured_root_alone(bare_root):
    root = bare_root()
    foreign = logging.StreamHandler(io.StringIO())
    root.addHandler(foreign)
    assert setup_logging("ingest") is None and root.handlers == [foreign]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_from_the_env_are_never_printed(bare_root, monkeypatch, fmt):
    bare_root()
    monkeypatch.setenv("SMC_LOG_FORMAT", fmt)
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    out = io.StringIO()
    setup_logging("executor", stream=out)
    log = logging.getLogger("smc.executor")
    settings = Settings(api_key=KEY, api_secret=SECRET)
    log.warning("request failed: X-MBX-APIKEY=%s sig of %s", KEY, SECRET,
                extra={"settings": settings, "api_key": KEY, "env": dict(os.environ)})
    try:
        raise RuntimeError(f"signed with {SECRET} by key {KEY}")
    except RuntimeError:
        log.exception("order rejected for %r", settings)
    text = out.getvalue()
    assert KEY not in text and SECRET not in text
    assert text.count(REDACTED) >= 4                          # both in the message, both in the traceback
    assert "request failed: X-MBX-APIKEY=***" in text and "RuntimeError: signed with *** by key ***" in text
    if fmt == "json":
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 2                                # the traceback inside its record's line
        assert all(set(r) <= {"ts", "level", "logger", "process", "run", "symbol", "msg", "exc"} for r in records)
        assert "PATH" not in text                               # no environment dumped from `extra`


def test_secret_values_are_the_secret_variables_only():
    env = {"BINANCE_API_KEY": KEY, "OTHER_API_KEY": "abcdef123", "GH_TOKEN": "ghp_123456", "SMC_LIVE_TRADING": "1",
           "SMC_NAMESPACE": "t-ns-secretless", "DB_PASSWORD": "x"}                # too short to guard anything
    assert set(secret_values(env)) == {KEY, "abcdef123", "ghp_123456"}


def test_a_frameworks_handlers_get_json_or_keep_their_format_without_secrets(monkeypatch):
    """apply_format is what the Faust worker's on_setup_root_logger calls on the root logger."""
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    logger = logging.getLogger("t-framework-root")
    logger.propagate = False
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.setFormatter(logging.Formatter("[faust] %(levelname)s %(message)s"))
    logger.addHandler(h)
    try:
        monkeypatch.setenv("SMC_LOG_FORMAT", "text")
        apply_format(logger, "worker", "t-ns")
        logger.error("key %s", KEY)
        assert out.getvalue() == f"[faust] ERROR key {REDACTED}\n"
        monkeypatch.setenv("SMC_LOG_FORMAT", "json")
        apply_format(logger, "worker", "t-ns")
        assert isinstance(h.formatter, JsonFormatter)
        logger.error("key %s", KEY)
        d = json.loads(out.getvalue().splitlines()[-1])
        assert (d["process"], d["run"], d["msg"]) == ("worker", "t-ns", f"key {REDACTED}")
    finally:
        logger.removeHandler(h)


def test_text_format_is_the_terminal_line():
    line = TextFormatter(secrets=()).format(_record())
    assert line.endswith(" WARNING smc.ingest: bar closed BTCUSDT") and "{" not in line


def _child_env(**given: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), SMC_CREDIT="0", **given)
    return env


def test_a_process_with_json_logs_writes_json_lines_even_when_it_crashes():
    """A real interpreter: the uncaught exception, secret in it, comes out as one redacted JSON line."""
    code = ("import logging, os; from infra.logs import setup_logging; setup_logging('executor', run='t-crash'); "
            "logging.getLogger('smc.executor').info('starting'); "
            "raise RuntimeError('cannot sign with ' + os.environ['BINANCE_API_SECRET'])")
    p = subprocess.run([sys.executable, "-c", code], env=_child_env(SMC_LOG_FORMAT="json", BINANCE_API_SECRET=SECRET),
                       capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert p.returncode == 1
    records = [json.loads(line) for line in p.stderr.splitlines()]
    assert [r["msg"] for r in records] == ["starting", "uncaught exception"]
    assert records[1]["level"] == "CRITICAL" and records[1]["run"] == "t-crash"
    assert records[1]["exc"].endswith(f"RuntimeError: cannot sign with {REDACTED}") and SECRET not in p.stderr


@pytest.mark.kafka
def test_ingest_replay_started_with_json_logs_writes_json_lines(kafka_bootstrap, namespace, tmp_path):
    """`python -m ingest replay` (an entry point as the supervisor starts it): its log lines on stderr are
    JSON with process ingest and the run's namespace."""
    ada = sorted((REPO_ROOT / "ingest" / "recorded").glob("BINANCE-SPOT-ADABTC-1m-*.csv"))[:1]
    assert ada, "the recorded ADABTC CSV is part of the repository"
    p = subprocess.run([sys.executable, "-m", "ingest", "replay", "--files", str(ada[0]), "--no-progress"],
                       env=_child_env(SMC_LOG_FORMAT="json", SMC_KAFKA_BOOTSTRAP=kafka_bootstrap,
                                      SMC_NAMESPACE=namespace, SMC_DATA_DIR=str(tmp_path)),
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines, "the replay logs its summary"
    records = [json.loads(line) for line in lines]               # every line is JSON
    assert all(r["process"] == "ingest" and r["run"] == namespace for r in records)
    assert any(r["logger"].startswith("smc") and r["msg"].startswith("replayed ") for r in records)
