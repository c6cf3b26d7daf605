"""The README's commands and example queries, executed: they cannot rot."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from infra.settings import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
pytestmark = pytest.mark.kafka


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_shows_exactly_two_commands():
    block = next(b for b in _blocks("bash") if "bootstrap.sh" in b)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash infra/bootstrap.sh run", "bash infra/bootstrap.sh test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "bash infra/bootstrap.sh test" in ci


@pytest.fixture(scope="module")
def main_job_env(kafka_bootstrap, tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, SMC_KAFKA_BOOTSTRAP=kafka_bootstrap, SMC_DATA_DIR=str(d),
               SMC_CLICKHOUSE_DSN=f"chdb://{d / 'chdb'}", SMC_NAMESPACE=f"readme-{d.name[-6:]}")
    # the README's main command (1m USD-M perps), shrunk to a few symbols and days; the heuristic so that it trades
    out = subprocess.run(["bash", "infra/bootstrap.sh", "run", "--days", "2", "--top", "5", "--scorer", "heuristic",
                          "--no-progress", "--report-dir", str(d / "report")],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (d / "report" / "index.html").exists()
    yield env, out.stdout
    from infra import kafka_io
    from infra.settings import load_settings
    kafka_io.delete_namespace(load_settings(env=env))


def test_main_command_runs_and_reports(main_job_env):
    _, stdout = main_job_env
    assert "Run summary" in stdout and "trades" in stdout


@pytest.mark.parametrize("sql", _blocks("sql"))
def test_readme_query_runs(main_job_env, sql):
    env, _ = main_job_env
    out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "smc"), "query", sql, "--format", "csv"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header
    if "pnl_by_tier" in sql or "decisions" in sql or "calibration" in sql:
        assert rows, f"{sql} returned no rows"


def test_bad_options_fail_clearly(main_job_env):
    env, _ = main_job_env
    out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "smc"), "run", "--symbols", "NOSUCHUSDT", "--no-progress"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "NOSUCHUSDT" in out.stdout + out.stderr
