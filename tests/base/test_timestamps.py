"""The one UTC timestamp format of the agent (status file, report, Events, unit descriptions)."""

from datetime import datetime, timedelta, timezone

import pytest

from agent.base import timestamps


def test_parse_rfc3339() -> None:
    assert timestamps.parse_rfc3339("2026-05-12T10:00:00Z") == 1778580000.0
    assert timestamps.parse_rfc3339("2026-05-12T10:00:00.5+00:00") == 1778580000.5
    assert timestamps.parse_rfc3339("2026-05-12T12:00:00.123456789+02:00") == pytest.approx(1778580000.123456)
    with pytest.raises(ValueError):
        timestamps.parse_rfc3339("2026-05-12T10:00:00")



def test_rfc3339_from_epoch_and_datetime() -> None:
    assert timestamps.rfc3339(1778580000.0) == "2026-05-12T10:00:00Z"
    assert timestamps.rfc3339(1778580000.1239, millis=True) == "2026-05-12T10:00:00.123Z"
    paris = datetime(2026, 5, 12, 12, 0, 0, 456789, tzinfo=timezone(timedelta(hours=2)))
    assert timestamps.rfc3339(paris) == "2026-05-12T10:00:00Z"
    assert timestamps.rfc3339(paris, millis=True) == "2026-05-12T10:00:00.456Z"


def test_rfc3339_round_trips() -> None:
    assert timestamps.parse_rfc3339(timestamps.rfc3339(1778580000.0)) == 1778580000.0
