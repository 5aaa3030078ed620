"""The CLI's shared parsing of instants (``rollout plan --now``, ``sim serve --clock``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.cli._common import parse_instant
from edgefleet.errors import InputError


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-02T23:30:00Z", datetime(2026, 11, 2, 23, 30, tzinfo=UTC)),
    ("2026-11-03T00:30:00+01:00", datetime(2026, 11, 2, 23, 30, tzinfo=UTC)),
    ("2026-03-29T03:30:00+02:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
])
def test_instants_with_an_offset_are_read_in_utc(text: str, expected: datetime) -> None:
    got = parse_instant(text, "--now")
    assert got == expected and got.tzinfo is UTC


def test_none_is_now() -> None:
    assert abs(parse_instant(None, "--clock") - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(("text", "message"), [
    ("2026-11-02T23:30:00", r"--clock '2026-11-02T23:30:00' has no UTC offset"),
    ("tomorrow", r"--clock 'tomorrow' is not ISO 8601"),
    ("2026-13-02T23:30:00Z", r"is not ISO 8601"),
])
def test_bad_instants_name_the_option_and_the_value(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        parse_instant(text, "--clock")
    assert e.value.exit_code == 2
