"""The run's metadata: settings that differ from the defaults (never a secret, DSN credentials redacted),
data file digests, the code's commit."""
from __future__ import annotations

import subprocess

from infra.run_meta import code_version, file_digest, redact_dsn, settings_diff
from infra.settings import REPO_ROOT, Settings


def test_settings_diff_lists_changes_and_exec_knobs_never_secrets():
    s = Settings(equity=5_000.0, model_path="", api_key="k-123", api_secret="s-456")
    diff = settings_diff(s, env={"SMC_EXEC_TAKER_FEE": "0.0004", "SMC_EQUITY": "5000", "HOME": "/root"})
    assert diff == {"equity": 5_000.0, "model_path": "", "SMC_EXEC_TAKER_FEE": "0.0004"}
    assert "k-123" not in repr(diff) and "s-456" not in repr(diff)
    assert settings_diff(Settings(), env={}) == {}


def test_dsn_credentials_are_redacted():
    assert redact_dsn("http://user:pw@ch.example:8123/db") == "http://***@ch.example:8123/db"
    assert redact_dsn("chdb:///var/chdb") == "chdb:///var/chdb"
    diff = settings_diff(Settings(clickhouse_dsn="https://u:secret@host/x"), env={})
    assert diff == {"clickhouse_dsn": "https://***@host/x"}


def test_file_digest_and_code_version(tmp_path):
    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    # the SHA-256 test vector of "abc" (FIPS 180-2)
    assert file_digest(f) == {"path": str(f), "bytes": 3,
                              "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_version()["commit"] == head
    assert code_version(tmp_path)["commit"].startswith("unknown")
