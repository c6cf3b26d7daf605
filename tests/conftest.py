"""Shared fixtures: the real local Kafka broker, isolated namespaces, and the real ClickHouse engine."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from infra.settings import REPO_ROOT, Settings, load_settings

os.environ.setdefault("SMC_CREDIT", "0")  # silence the smartmoneyconcepts banner

DATA = REPO_ROOT / "tests" / "data"
RECORDED = REPO_ROOT / "ingest" / "recorded"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"   # present beside the repo in CI and dev, not in a user's clone


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real Apache Kafka broker: the one given by SMC_KAFKA_BOOTSTRAP, else the local KRaft launcher."""
    from infra import local_broker
    given = os.environ.get("SMC_KAFKA_BOOTSTRAP")
    if given:
        local_broker.wait_ready(given, timeout=60)
        return given
    return local_broker.start(int(os.environ.get("SMC_KAFKA_PORT", "9092")))


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(kafka_bootstrap: str, namespace: str, tmp_path: Path) -> Settings:
    """Settings of an isolated run: own topics/groups (namespace), own data dir, embedded ClickHouse."""
    base = load_settings(env={})
    return base.with_(kafka_bootstrap=kafka_bootstrap, namespace=namespace, data_dir=str(tmp_path),
                      clickhouse_dsn=_chdb_dsn())


_CHDB_DIR: str | None = None


def _chdb_dsn() -> str:
    # chDB allows one engine per process: the whole test session shares one path, tests use databases.
    global _CHDB_DIR
    if _CHDB_DIR is None:
        import tempfile
        _CHDB_DIR = tempfile.mkdtemp(prefix="smc-chdb-")
    return f"chdb://{_CHDB_DIR}"


@pytest.fixture(scope="session")
def chdb_dsn() -> str:
    """The session's embedded ClickHouse path (one chDB engine per process)."""
    return _chdb_dsn()


@pytest.fixture
def audit_store(namespace: str):
    """The real ClickHouse engine (chDB in-process by default; SMC_TEST_CLICKHOUSE_DSN for a server)."""
    from infra.clickhouse import AuditStore
    store = AuditStore(os.environ.get("SMC_TEST_CLICKHOUSE_DSN", _chdb_dsn()), database=f"db_{namespace}")
    store.ensure_schema()
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {store.database}")


def pytest_configure(config):
    # test helper modules next to the tests (tests/processors/harness.py ...) import by plain name
    import sys
    for sub in ("processors", "ingest"):
        p = str(Path(__file__).parent / sub)
        if p not in sys.path:
            sys.path.insert(0, p)


def _load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


@pytest.fixture(autouse=True)
def _print_load_average_around_benches(request):
    """Every benchmark prints the machine's load average before and after it: a figure measured on a busy
    machine says so next to itself (the README quotes these lines with the figures). Lives here, not in a
    tests/bench/conftest.py: a second module named conftest would shadow this one for `from conftest import`."""
    if "tests/bench/" not in str(request.node.fspath).replace(os.sep, "/"):
        yield
        return
    cores = os.cpu_count()
    name = request.node.name
    print(f"\n[{name}] load average (1 / 5 / 15 min) before: {_load_average()} on {cores} cores", flush=True)
    yield
    print(f"[{name}] load average (1 / 5 / 15 min) after: {_load_average()} on {cores} cores", flush=True)
