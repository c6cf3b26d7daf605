"""The processors worker through a broker outage (kill -9), on a broker of its own (the session's stays up).

Shorter than SMC_DELIVERY_TIMEOUT_S: the worker waits it out, loses and doubles nothing, signals and
tables equal the uninterrupted core's. Longer: it stops with a one-line reason and a non-zero exit
(never carrying on over a hole), and a restarted worker completes the run, still equal to the core.
"""
from __future__ import annotations

import pytest

from scenarios import OwnBroker, scenario_broker_outage, scenario_broker_outage_past_timeout
from test_worker import assert_changelogs_equal

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    b = OwnBroker(tmp_path_factory.mktemp("own-kafka"))
    yield b
    b.stop()


def test_outage_shorter_than_the_delivery_timeout_loses_and_doubles_nothing(own_broker, settings):
    t = scenario_broker_outage(own_broker, settings)
    assert t.counts == (0, 0, 0), t
    assert_changelogs_equal(settings.with_(kafka_bootstrap=own_broker.bootstrap, interval="1m"), t.tables)


def test_outage_longer_than_the_delivery_timeout_stops_the_worker_loudly(own_broker, settings):
    t = scenario_broker_outage_past_timeout(own_broker, settings)
    assert t.counts == (0, 0, 0), t
    assert_changelogs_equal(settings.with_(kafka_bootstrap=own_broker.bootstrap, interval="1m"), t.tables)
