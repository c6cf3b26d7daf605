"""The topic-creation job of infra/kafka.yml, generated from the registry (schemas/topics.py).

`python -m infra.compose` prints the job's script; tests/pipeline/test_compose.py checks that kafka.yml
holds exactly it, so the compose file never hand-copies a topic, partition count or policy. The script
reads SMC_NAMESPACE and SMC_PARTITIONS from the job's environment (compose passes the host's), like
infra.kafka_io.ensure_topics does from the settings.
"""
from __future__ import annotations

from schemas.topics import registry

BOOTSTRAP = "kafka:19092"


def topics_script() -> list[str]:
    """The job's shell lines, `$$` escaped for compose. Keyed topics (whose partition count follows the
    settings) get $SMC_PARTITIONS; the rest keep the registry's fixed count."""
    specs, probe = registry(6), registry(7)
    lines = ["set -e", "k=/opt/kafka/bin/kafka-topics.sh", "ns=$${SMC_NAMESPACE:+$${SMC_NAMESPACE}.}"]
    for base, spec in specs.items():
        partitions = "$${SMC_PARTITIONS}" if probe[base].partitions != spec.partitions else str(spec.partitions)
        lines.append(f"$$k --bootstrap-server {BOOTSTRAP} --create --if-not-exists --topic $${{ns}}{base} "
                     f"--partitions {partitions} --replication-factor 1 --config cleanup.policy={spec.cleanup} "
                     f"--config retention.ms={spec.retention_ms}")
    lines.append(f"$$k --bootstrap-server {BOOTSTRAP} --list")
    return lines


if __name__ == "__main__":
    print("\n".join(topics_script()))
