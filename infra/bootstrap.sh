#!/usr/bin/env bash
# One entry point for a fresh machine (no Docker engine needed):
#   bash infra/bootstrap.sh run     # set up, then run the main job on embedded defaults
#   bash infra/bootstrap.sh test    # set up, start a local Kafka broker, run the test suite
#   bash infra/bootstrap.sh bench   # set up, run the benchmark suite (prints ratios)
#   bash infra/bootstrap.sh stress  # set up, run the fault matrix (SMC_STRESS_N repetitions, default 20)
#   bash infra/bootstrap.sh lint    # set up, `ruff check .` and mypy on the pure core (pyproject.toml [tool.ruff], [tool.mypy])
# Set-up is idempotent: a .venv with the project, and the Apache Kafka jars fetched by Maven.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export SMC_CREDIT=0

# the runtime for `run`; the test extras (pytest, reference libraries, linters) for everything else.
# Versions pinned by infra/constraints.txt (what CI last passed with); pyproject.toml has the floors.
setup() {
  local extras=${1:-[test]} probe="import infra.cli, faust, chdb, plotly, httpx, lightgbm"
  [ "$extras" = "[test]" ] && probe="$probe, pytest, talib, smartmoneyconcepts, ruff, mypy"
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  if ! .venv/bin/python -c "$probe" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c infra/constraints.txt -e ".$extras"
  fi
  .venv/bin/python -m infra.local_broker fetch >/dev/null
}

broker_up() {
  # A real Apache Kafka broker: reuse one given by SMC_KAFKA_BOOTSTRAP, else the local KRaft launcher.
  if [ -z "${SMC_KAFKA_BOOTSTRAP:-}" ]; then
    export SMC_KAFKA_HOME=${SMC_KAFKA_HOME:-$ROOT/var/kafka-test}
    export SMC_KAFKA_PORT=${SMC_KAFKA_PORT:-39092}
    rm -rf "$SMC_KAFKA_HOME/data"
    .venv/bin/python -m infra.local_broker start --port "$SMC_KAFKA_PORT" --home "$SMC_KAFKA_HOME" >/dev/null
    STARTED_BROKER=1
    export SMC_KAFKA_BOOTSTRAP=127.0.0.1:$SMC_KAFKA_PORT
  fi
}

broker_down() {
  if [ "${STARTED_BROKER:-0}" = 1 ]; then
    .venv/bin/python -m infra.local_broker stop --home "$SMC_KAFKA_HOME" >/dev/null || true
  fi
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  lint)
    setup
    .venv/bin/python -m ruff check . "$@"
    .venv/bin/python -m mypy
    ;;
  run)
    setup ""
    exec .venv/bin/smc run "$@"
    ;;
  test)
    setup
    broker_up
    trap broker_down EXIT
    .venv/bin/python -m pytest -m "not bench and not stress" -q -p no:cacheprovider "$@"
    ;;
  bench)
    setup
    broker_up
    trap broker_down EXIT
    .venv/bin/python -m pytest -m bench -q -s -p no:cacheprovider "$@"
    ;;
  stress)
    setup
    broker_up
    trap broker_down EXIT
    .venv/bin/python -m pytest -m stress -q -s -p no:cacheprovider tests/stress "$@"
    ;;
  *) echo "usage: bash infra/bootstrap.sh {run|test|bench|stress|lint|setup}" >&2; exit 2 ;;
esac
