"""Imports point down only: orchestration -> models -> services -> ground -> schemas (the brief's style rule).

Ground is what every process stands on (settings, the Kafka and ClickHouse adapters with the audit trail's
views, the broker launcher, probes, logs, metrics); services are the three processes' packages; the
rest of infra/ is orchestration (CLI, pipelines, live supervisor, reports, research tools). Read from
the source with `ast`, so an import inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

from infra.settings import REPO_ROOT

GROUND = {"settings", "kafka_io", "clickhouse", "analytics", "local_broker", "probes", "logs", "metrics", "compose"}
SERVICES = ("processors", "executor", "ingest")


def _layer(module: str) -> int:
    top, _, rest = module.partition(".")
    if top == "schemas":
        return 0
    if top == "infra":
        return 1 if rest.split(".")[0] in GROUND or not rest else 4
    if top in SERVICES:
        return 2
    if top == "models":
        return 3
    return -1                      # stdlib or third party


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("infra", "schemas", "models", *SERVICES):    # from infra import kafka_io
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def test_every_import_points_down():
    wrong = []
    for top in ("schemas", "infra", *SERVICES, "models"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            here = _module_of(path)
            mine = _layer(here)
            for line, target in _imports(path):
                theirs = _layer(target)
                if theirs < 0:
                    continue
                other_service = mine == theirs == 2 and target.split(".")[0] != here.split(".")[0]
                if theirs > mine or other_service:
                    wrong.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target}")
    assert not wrong, "imports pointing up (or across services):\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a ground module importing the executor is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from infra import kafka_io, pipeline\n\ndef f():\n    from executor.risk import TIERS\n    return TIERS\n")
    assert [(t, _layer(t)) for _, t in _imports(bad)] == [("infra.kafka_io", 1), ("infra.pipeline", 4),
                                                          ("executor.risk", 2)]
