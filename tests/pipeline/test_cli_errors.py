"""`smc` commands fail clearly, with an exit code, when what they read is not there."""
from __future__ import annotations

from infra import cli


def test_htf_bars_without_a_broker_says_so(monkeypatch, capsys):
    monkeypatch.setenv("SMC_KAFKA_BOOTSTRAP", "127.0.0.1:1")     # nothing listens there
    assert cli.main(["htf-bars", "--source", "bt-nowhere"]) == 2
    err = capsys.readouterr().err
    assert "cannot read from Kafka at 127.0.0.1:1" in err and "smc broker start" in err
