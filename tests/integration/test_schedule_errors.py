"""The scheduler's errors without a server: no Prefect API configured, an API that does not answer,
bad arguments. Each names what to do. ``schedule rollout`` (an alias of ``train start``) needs no
Prefect API at all, and refuses the options of the per-window-group scheduler it replaced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import InputError, ScheduleError
from edgefleet.prefect_server import free_port
from edgefleet.schedule.prefect_schedule import RunRequest, cancel_runs, create_runs, list_runs
from tests.helpers import SAMPLE_INVENTORY, record_release


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


@pytest.mark.parametrize("api", [""], indirect=True)
def test_schedule_rollout_starts_a_train_without_any_prefect_api(api: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)
    record_release(tmp_path, "r1")
    r = CliRunner().invoke(app, ["schedule", "rollout", "--release", "r1", "-i", str(SAMPLE_INVENTORY), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "now starts a release train" in r.stderr
    train = json.loads(r.stdout)["train"]
    assert train["status"] == "running" and [s["name"] for s in train["spec"]["stages"]] == ["canary", "ring1",
                                                                                              "ring2"]
    # The listing of scheduled runs still talks to Prefect, and says what is missing.
    listed = CliRunner().invoke(app, ["schedule", "list"])
    assert isinstance(listed.exception, ScheduleError) and "PREFECT_API_URL" in str(listed.exception)


@pytest.mark.parametrize("option", [["--group", "g1"], ["--param", "poll_s=1"], ["--deployment", "rollout/x"],
                                    ["--stores", "dk-001"]])
def test_schedule_rollout_refuses_the_options_of_the_old_scheduler(option: list[str]) -> None:
    r = CliRunner().invoke(app, ["schedule", "rollout", "--release", "r1", "--dry-run", *option])
    assert r.exit_code == 2 and "No such option" in r.output, r.output
