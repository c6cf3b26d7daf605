"""`smc config show`: every setting's effective value and where it came from; secrets never shown."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.settings import REPO_ROOT, SettingsError, describe, resolve_settings, shown

SECRET = "Zq9-not-a-real-key-7781xYw"


def _smc(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    full.update(PYTHONPATH=str(REPO_ROOT), SMC_CREDIT="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "infra.cli", *argv], env=full, capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    return {r["setting"]: (r["value"], r["source"]) for r in json.loads(stdout)}


def test_each_layer_is_named_as_the_source(tmp_path):
    toml = tmp_path / "smc.toml"
    toml.write_text('partitions = 3\nnamespace = "from-file"\nequity = 2500.0\n')
    res = _smc("--config", str(toml), "config", "show", "--format", "json", "--interval", "5m",
               env={"SMC_EQUITY": "750", "SMC_HTF_FACTOR": "3"})
    assert res.returncode == 0, res.stderr
    rows = _rows(res.stdout)
    assert rows["kafka_bootstrap"] == ("127.0.0.1:9092", "default")
    assert rows["partitions"] == ("3", str(toml))
    assert rows["namespace"] == ("from-file", str(toml))
    assert rows["equity"] == ("750.0", "SMC_EQUITY")          # the environment wins over the file
    assert rows["htf_factor"] == ("3", "SMC_HTF_FACTOR")
    assert rows["interval"] == ("5m", "flag --interval")       # a flag wins over everything
    assert set(rows) == {name for name, _, _ in describe(*resolve_settings(env={}))}


def test_smc_config_environment_variable_names_the_file(tmp_path):
    toml = tmp_path / "other.toml"
    toml.write_text('broker = "binance"\n')
    rows = _rows(_smc("config", "show", "--format", "json", env={"SMC_CONFIG": str(toml)}).stdout)
    assert rows["broker"] == ("binance", str(toml))


def test_a_flag_beats_the_environment():
    settings, sources = resolve_settings(env={"SMC_MODEL_PATH": "/x/model.txt"},
                                         flags={"model_path": ("", "--scorer heuristic")})
    assert settings.model_path == "" and sources["model_path"] == "flag --scorer heuristic"
    _, sources = resolve_settings(env={"SMC_MODEL_PATH": "/x/model.txt"})
    assert sources["model_path"] == "SMC_MODEL_PATH"


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_secrets_never_appear_not_even_a_prefix(fmt):
    dsn_password = "pw-" + SECRET[::-1]
    res = _smc("config", "show", "--format", fmt,
               env={"BINANCE_API_KEY": SECRET, "BINANCE_API_SECRET": SECRET + "s",
                    "SMC_CLICKHOUSE_DSN": f"http://analyst:{dsn_password}@ch.example:8123/smc"})
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    for secret in (SECRET, SECRET + "s", dsn_password):
        for n in (4, len(secret)):                     # neither the value nor its first characters
            assert secret[:n] not in out, (secret[:n], out)
    assert "http://analyst:********@ch.example:8123/smc" in out
    if fmt == "json":
        rows = _rows(res.stdout)
        assert rows["api_key"] == ("******** (set)", "BINANCE_API_KEY")
        assert rows["api_secret"] == ("******** (set)", "BINANCE_API_SECRET")


def test_unset_secrets_say_so():
    assert shown("api_key", "") == "(not set)" and shown("api_secret", "x") == "******** (set)"
    assert shown("clickhouse_dsn", "http://ch:8123") == "http://ch:8123"          # nothing to mask
    assert shown("clickhouse_dsn", "http://u@ch:8123") == "http://u@ch:8123"      # a user, no password


def test_an_unknown_toml_key_is_named_exit_2(tmp_path):
    toml = tmp_path / "typo.toml"
    toml.write_text("partitons = 6\n")
    res = _smc("--config", str(toml), "config", "show")
    assert res.returncode == 2 and res.stdout == ""
    assert "unknown setting(s) ['partitons']" in res.stderr and str(toml) in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("line, named", [('partitions = "six"', "partitions (%s) = 'six': expected an integer"),
                                         ("live_trading = 1", "live_trading (%s) = 1: expected a boolean"),
                                         ("equity = true", "equity (%s) = True: expected a number")])
def test_a_wrong_toml_type_is_named_with_key_and_value_exit_2(tmp_path, line, named):
    toml = tmp_path / "bad.toml"
    toml.write_text(line + "\n")
    res = _smc("--config", str(toml), "config", "show")
    assert res.returncode == 2 and res.stdout == ""
    assert named % toml in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_a_wrong_environment_type_is_named():
    with pytest.raises(SettingsError, match=r"partitions \(SMC_PARTITIONS\) = 'six': expected an integer"):
        resolve_settings(env={"SMC_PARTITIONS": "six"})
    res = _smc("config", "show", env={"SMC_PARTITIONS": "six"})
    assert res.returncode == 2 and "SMC_PARTITIONS" in res.stderr and "'six'" in res.stderr


def test_the_embedded_audit_trail_follows_the_data_dir(tmp_path):
    """The default DSN is chDB under SMC_DATA_DIR (a run with its own data dir must not write the repo's
    var/); a DSN given explicitly is kept as given."""
    s, src = resolve_settings(env={"SMC_DATA_DIR": str(tmp_path)})
    assert s.clickhouse_dsn == f"chdb://{tmp_path / 'chdb'}" and "SMC_DATA_DIR" in src["clickhouse_dsn"]
    s, src = resolve_settings(env={})
    assert s.clickhouse_dsn == f"chdb://{REPO_ROOT / 'var' / 'chdb'}" and src["clickhouse_dsn"] == "default"
    s, src = resolve_settings(env={"SMC_DATA_DIR": str(tmp_path), "SMC_CLICKHOUSE_DSN": "http://ch:8123"})
    assert s.clickhouse_dsn == "http://ch:8123" and src["clickhouse_dsn"] == "SMC_CLICKHOUSE_DSN"
