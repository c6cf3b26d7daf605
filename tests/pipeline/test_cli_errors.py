"""`smc` commands fail clearly, with an exit code, when what they read is not there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import cli
from infra.settings import REPO_ROOT, SettingsError, load_settings


def test_htf_bars_without_a_broker_says_so(monkeypatch, capsys):
    monkeypatch.setenv("SMC_KAFKA_BOOTSTRAP", "127.0.0.1:1")     # nothing listens there
    assert cli.main(["htf-bars", "--source", "bt-nowhere"]) == 2
    err = capsys.readouterr().err
    assert "cannot read from Kafka at 127.0.0.1:1" in err and "smc broker start" in err


# --- user mistakes: a one-line error naming the input and what is valid, exit code 2, no traceback ---

def _clean_env(**given: str) -> dict:
    """The child's environment: no SMC_* left over from the test process (an earlier test's or the
    shell's), only what the test gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), SMC_CREDIT="0", **given)
    return env


def _smc(*argv: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = _clean_env(**(env or {}))
    return subprocess.run([sys.executable, "-m", "infra.cli", *argv], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.mark.parametrize("cmd", [["run"], ["replay-topic", "--source", "bt-x"]])
@pytest.mark.parametrize("option", ["--start", "--end"])
@pytest.mark.parametrize("value", ["2026-13-45", "yesterday", "2026-05-01T25:00"])
def test_a_bad_date_names_the_option_and_the_value(cmd, option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*cmd, option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r} is not a date" in err and "ISO date or datetime" in err
    assert "Traceback" not in err


def test_good_dates_parse_to_utc_milliseconds():
    assert cli._when("2026-05-01") == 1777593600000
    assert cli._when("2026-05-01T01:00") == 1777593600000 + 3_600_000
    assert cli._when("2026-05-01T03:00+02:00") == 1777593600000 + 3_600_000
    assert cli._when("1777593600000") == 1777593600000


@pytest.mark.parametrize("var,value,expected", [("SMC_PARTITIONS", "six", "an integer"),
                                                ("SMC_EQUITY", "lots", "a number"),
                                                ("SMC_LIVE_TRADING", "maybe", "a boolean")])
def test_a_wrong_type_in_an_environment_variable_is_named(monkeypatch, capsys, var, value, expected):
    monkeypatch.setenv(var, value)
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    name = var[len("SMC_"):].lower()
    assert f"setting {name} ({var}) = {value!r}: expected {expected}" in err and "Traceback" not in err


@pytest.mark.parametrize("line,message", [('partitions = "6"', "setting partitions ({f}) = '6': expected an integer"),
                                          ("equity = true", "setting equity ({f}) = True: expected a number"),
                                          ("live_trading = 1", "setting live_trading ({f}) = 1: expected a boolean"),
                                          ("namespace = 7", "setting namespace ({f}) = 7: expected a string"),
                                          ("partitionz = 6", "unknown setting(s) ['partitionz'] in {f}"),
                                          ("partitions = ", "is not valid TOML")])
def test_a_wrong_toml_config_is_named(tmp_path, monkeypatch, capsys, line, message):
    for var in ("SMC_PARTITIONS", "SMC_EQUITY", "SMC_LIVE_TRADING", "SMC_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    f = tmp_path / "smc.toml"
    f.write_text(line + "\n")
    assert cli.main(["--config", str(f), "run"]) == 2
    err = capsys.readouterr().err
    assert message.format(f=f) in err and "Traceback" not in err


def test_typed_toml_values_and_environment_text_both_load(tmp_path):
    f = tmp_path / "smc.toml"
    f.write_text("partitions = 3\nequity = 5000\nlive_trading = true\nnamespace = \"x\"\n")
    s = load_settings(f, env={})
    assert (s.partitions, s.equity, s.live_trading, s.namespace) == (3, 5000.0, True, "x")
    s = load_settings(f, env={"SMC_PARTITIONS": "4", "SMC_LIVE_TRADING": "off", "SMC_EQUITY": "1e3"})
    assert (s.partitions, s.equity, s.live_trading) == (4, 1000.0, False)
    with pytest.raises(SettingsError, match=r"setting partitions \(SMC_PARTITIONS\) = '4.5': expected an integer"):
        load_settings(env={"SMC_PARTITIONS": "4.5"})
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize("dsn,message", [("http://127.0.0.1:1", "no ClickHouse server at http://127.0.0.1:1 ([Errno 111]"),
                                         ("mysql://x", "SMC_CLICKHOUSE_DSN='mysql://x': not a ClickHouse DSN")])
def test_a_dead_clickhouse_dsn_is_said_before_the_broker_starts(monkeypatch, capsys, dsn, message):
    monkeypatch.setenv("SMC_CLICKHOUSE_DSN", dsn)
    monkeypatch.setenv("SMC_KAFKA_BOOTSTRAP", "127.0.0.1:1")   # were Kafka tried first, this would fail otherwise
    t0 = time.monotonic()
    assert cli.main(["run", "--days", "1", "--no-progress"]) == 2
    assert time.monotonic() - t0 < 5
    out = " ".join(capsys.readouterr().out.split())   # rich wraps long lines
    assert message in out and "Kafka" not in out


def test_executor_flatten_without_a_broker_fails_in_seconds():
    t0 = time.monotonic()
    res = _smc("executor", "flatten", "BTCUSDT", env={"SMC_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert time.monotonic() - t0 < 5       # interpreter start-up + the TCP refusal (was 30 s)
    assert res.returncode == 2
    assert "executor flatten: no Kafka broker answers at 127.0.0.1:1" in res.stderr and "smc broker start" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.kafka
def test_replay_topic_on_an_unknown_namespace_says_so(kafka_bootstrap, namespace, monkeypatch, capsys):
    monkeypatch.setenv("SMC_KAFKA_BOOTSTRAP", kafka_bootstrap)
    assert cli.main(["replay-topic", "--source", namespace]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"namespace {namespace!r} has no klines on {kafka_bootstrap}" in err and "bt-20261125-093000" in err


def test_replay_topic_without_a_broker_says_so(monkeypatch, capsys):
    monkeypatch.setenv("SMC_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert cli.main(["replay-topic", "--source", "bt-x"]) == 2
    assert "no Kafka broker answers at 127.0.0.1:1" in " ".join(capsys.readouterr().err.split())


def _processes_with(marker: str) -> list[int]:
    pids = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env_file.read_bytes():
                pids.append(int(env_file.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.kafka
def test_ctrl_c_during_smc_run_stops_cleanly_with_130(kafka_bootstrap, namespace, tmp_path):
    # Ctrl-C in a terminal signals the whole foreground process group: the CLI and its worker child
    env = _clean_env(SMC_KAFKA_BOOTSTRAP=kafka_bootstrap, SMC_NAMESPACE=namespace, SMC_DATA_DIR=str(tmp_path),
                     SMC_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'chdb'}")
    p = subprocess.Popen([sys.executable, "-m", "infra.cli", "run", "--days", "30", "--no-progress"], env=env,
                         cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        for line in p.stdout:
            if line.startswith("Kafka"):
                break
        deadline = time.monotonic() + 60
        while not (tmp_path / "runs" / namespace / "workers" / "worker" / "worker.log").exists():
            assert p.poll() is None, p.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2)                                   # the worker is up and consuming
        assert p.poll() is None, p.stderr.read()[-3000:]
        os.killpg(p.pid, signal.SIGINT)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 15
    assert p.returncode == 130, err
    assert "smc run: interrupted; stopping the worker and releasing the broker" in err
    assert "smc: interrupted; stopped cleanly" in err and "Traceback" not in err
    deadline = time.monotonic() + 5
    while _processes_with(f"SMC_NAMESPACE={namespace}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"SMC_NAMESPACE={namespace}") == []


# --- help that helps: the delegated subcommands show their module's own help ---
@pytest.mark.parametrize("name,expected", [("ingest", "{live,replay,audit}"), ("worker", "--loglevel"),
                                           ("executor", "{run,flatten,resume}"), ("model", "{train,evaluate}")])
def test_delegated_help_is_the_modules_help(name, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert expected in out and "rest" not in out.split()


def test_executor_subcommand_help_reaches_the_module(capsys):
    with pytest.raises(SystemExit):
        cli.main(["executor", "flatten", "--help"])
    assert "usage: python -m executor flatten" in capsys.readouterr().out


@pytest.mark.kafka
def test_bare_smc_worker_runs_the_worker(kafka_bootstrap, namespace, tmp_path):
    from infra import kafka_io
    settings = load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap, namespace=namespace)
    env = _clean_env(SMC_KAFKA_BOOTSTRAP=kafka_bootstrap, SMC_NAMESPACE=namespace, SMC_DATA_DIR=str(tmp_path),
                     SMC_STATS_FILE=str(tmp_path / "stats.json"))
    p = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker"], env=env, cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "stats.json").exists():     # the worker writes its figures once it runs
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert kafka_io.topic(settings, "signals") in kafka_io.admin(settings).list_topics(timeout=10).topics
    finally:
        p.terminate()
        p.wait(60)
        kafka_io.delete_namespace(settings)


def test_live_help_names_what_selects_the_binance_broker(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--broker binance" not in out and "SMC_BROKER=binance" in out and "SMC_LIVE_TRADING=1" in out


# --- smc health: one line from the live supervisor's status file, exit 0 / 1 ---
def _status(tmp_path, children_state="running", worker=("ok", "caught up"), age_s=0.0):
    live = tmp_path / "live"
    live.mkdir(exist_ok=True)
    snap = {"uptime_s": 42.0, "namespace": "", "topics": {}, "worker": {},
            "children": {n: {"pid": 1, "pids": [1], "state": "running", "restarts": 0, "exit_codes": [], "log": ""}
                         for n in ("audit", "executor", "processors", "ingest")},
            "worker_health": {"state": worker[0], "detail": worker[1]}}
    snap["children"]["executor"]["state"] = children_state
    import orjson
    (live / "status.json").write_bytes(orjson.dumps(snap))
    if age_s:
        t = time.time() - age_s
        os.utime(live / "status.json", (t, t))


@pytest.mark.parametrize("case,code,line", [
    ({}, 0, "ok: 4 parts running, processors ok (caught up), up 42 s"),
    ({"children_state": "restart in 3s"}, 1, "not running: executor restart in 3s"),
    ({"worker": ("stalled", "12 record(s) waiting and no partition moved for 130 s")}, 1,
     "processors stalled: 12 record(s) waiting"),
    ({"age_s": 120}, 1, "live status not written for 120 s"),
    (None, 1, "no live status"),
])
def test_smc_health_reads_the_live_status(tmp_path, monkeypatch, capsys, case, code, line):
    monkeypatch.setenv("SMC_DATA_DIR", str(tmp_path))
    if case is not None:
        _status(tmp_path, **case)
    assert cli.main(["health"]) == code
    out = capsys.readouterr().out
    assert line in out and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("cmd", [["run"], ["backtest"], ["sweep"], ["lookahead-check"]])
@pytest.mark.parametrize("value", ["0", "-2", "nan", "two"])
def test_days_must_be_a_positive_number(cmd, value, capsys):
    """--days 0 used to mean "all the data" without a word."""
    with pytest.raises(SystemExit) as exc:
        cli.main([*cmd, "--days", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --days: {value!r} is not a positive number of days" in err and "--full" in err
    assert cli._days("0.5") == 0.5
