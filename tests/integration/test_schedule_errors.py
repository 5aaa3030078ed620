"""The scheduler's errors without a server: no Prefect API configured, an API that does not answer,
bad arguments. Each names what to do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from edgefleet.errors import InputError, ScheduleError
from edgefleet.prefect_server import free_port
from edgefleet.schedule.prefect_schedule import RunRequest, cancel_runs, create_runs, list_runs


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url: str = request.param
    with temporary_settings(updates={PREFECT_API_URL: url.format(port=free_port()) if url else None}):
        yield


@pytest.mark.parametrize("api", [""], indirect=True)
def test_no_api_configured_is_refused_before_any_call(api: None) -> None:
    with pytest.raises(ScheduleError, match=r"no Prefect API configured.*PREFECT_API_URL"):
        list_runs()


@pytest.mark.parametrize("api", ["http://127.0.0.1:{port}/api"], indirect=True)
def test_unreachable_api_names_the_url(api: None) -> None:
    t0 = time.monotonic()
    with pytest.raises(ScheduleError, match=r"http://127\.0\.0\.1:\d+/api"):
        list_runs("r1")
    assert time.monotonic() - t0 < 60  # bounded: the client's retries end


@pytest.mark.parametrize("api", ["http://127.0.0.1:{port}/api"], indirect=True)
def test_bad_arguments_are_input_errors(api: None) -> None:
    with pytest.raises(InputError, match=r"--release R, or one or more flow run ids"):
        cancel_runs()
    with pytest.raises(InputError, match=r"'abc' is not a flow run id"):
        cancel_runs(ids=["abc"])
    with pytest.raises(InputError, match=r"no UTC offset"):
        create_runs([RunRequest("rollout/rollout", "r1", "g", datetime(2026, 11, 3, 12, 0))])
    assert create_runs([]) == []
