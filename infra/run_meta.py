"""What a run was: period, symbols, timeframes, settings that differ from the defaults, data files with
their hashes, the code's git commit, wall time. Written at run time into the report's summary.json
("run") and shown on top of the page, so a report says how to reproduce it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from infra.settings import REPO_ROOT, Settings

_SECRET_FIELDS = ("api_key", "api_secret")
_EXEC_PREFIX = "SMC_EXEC_"   # the executor's knobs (executor.config.config_from_env) come from the environment


def redact_dsn(value: str) -> str:
    """A URL without its user:password part (a ClickHouse DSN may carry credentials)."""
    parts = urlsplit(value)
    if parts.username is None and parts.password is None:
        return value
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def settings_diff(settings: Settings, env: dict | None = None) -> dict[str, str]:
    """Every setting that differs from its default (secrets never), and every SMC_EXEC_* variable set."""
    base = Settings()
    out = {}
    for f in dataclasses.fields(Settings):
        if f.name in _SECRET_FIELDS:
            continue
        value = getattr(settings, f.name)
        if value != getattr(base, f.name):
            out[f.name] = redact_dsn(value) if isinstance(value, str) and "://" in value else value
    env = os.environ if env is None else env
    for k in sorted(env):
        if k.startswith(_EXEC_PREFIX):
            out[k] = env[k]
    return out


def file_digest(path: str | Path) -> dict:
    """{"path", "bytes", "sha256"} of a data file (streamed: the files are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def code_version(repo: Path = REPO_ROOT) -> dict:
    """The git commit of the code that ran and whether the work tree had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown (not a git checkout)", "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown (git not available)", "dirty": None}


def run_meta(settings: Settings, plan, engine: str, wall_s: float) -> dict:
    """The run's metadata (plan: infra.pipeline.BacktestPlan). wall_s: the run's wall time up to its report."""
    def iso(ms):
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()
    return {
        "namespace": settings.namespace,
        "engine": engine,
        "period": [iso(plan.start), iso(plan.end)],
        "symbols": list(plan.symbols),
        "interval": plan.interval,
        "htf": f"{settings.htf_factor} x {plan.interval}",
        "scorer": "heuristic" if not settings.model_path else settings.model_path,
        "strategy_version": settings.strategy_version,
        "settings_changed": settings_diff(settings),
        "data_files": [file_digest(f) for f in plan.files],
        "code": code_version(),
        "wall_s": wall_s,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
