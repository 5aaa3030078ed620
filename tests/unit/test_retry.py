"""The one retry policy (``edgefleet.retry``): the exception's ``transient`` decides, a caller may only
narrow it; attempts, backoff and a deadline bound the tries; the last failure comes out as it is."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edgefleet.errors import BmcError, InputError, KubeApiUnreachable, SchedulerBusy, TalosUnavailable
from edgefleet.retry import RetryPolicy, is_transient, retry_async, retrying

FAST = RetryPolicy(attempts=4, backoff_s=0.001, backoff_max_s=0.004)


def failing(errors: list[BaseException], result: Any = "ok") -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """A call that raises ``errors`` one by one, then returns ``result``; and its call count."""
    calls = [0]

    async def call() -> Any:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return call, calls


def test_transient_is_decided_by_the_exception() -> None:
    assert is_transient(BmcError("x", transient=True)) and not is_transient(BmcError("x"))
    assert is_transient(KubeApiUnreachable("x")) and is_transient(TalosUnavailable("x")) and is_transient(
        SchedulerBusy("x"))
    assert not is_transient(InputError("x")) and not is_transient(ValueError("x"))


def test_transient_failures_are_retried_until_success() -> None:
    call, calls = failing([BmcError("500", transient=True)] * 3)
    assert asyncio.run(retrying(FAST, call)) == "ok" and calls[0] == 4


def test_a_permanent_failure_is_raised_at_once() -> None:
    err = BmcError("401")
    call, calls = failing([err])
    with pytest.raises(BmcError) as ei:
        asyncio.run(retrying(FAST, call))
    assert ei.value is err and calls[0] == 1


def test_attempts_bound_the_tries_and_the_last_failure_comes_out_as_it_is() -> None:
    errs: list[BaseException] = [BmcError(f"500 #{i}", transient=True) for i in range(6)]
    last = errs[3]
    call, calls = failing(errs)
    with pytest.raises(BmcError) as ei:
        asyncio.run(retrying(FAST, call))
    assert calls[0] == 4 and ei.value is last


def test_a_caller_narrows_what_is_retried() -> None:
    call, calls = failing([BmcError("500 on a reset", transient=True)])
    with pytest.raises(BmcError):
        asyncio.run(retrying(FAST, call, retry_if=lambda e: is_transient(e) and False))
    assert calls[0] == 1


def test_a_deadline_instead_of_a_count() -> None:
    policy = RetryPolicy(attempts=None, backoff_s=0.02, backoff_max_s=0.02, deadline_s=0.3)
    call, calls = failing([BmcError("500", transient=True)] * 1000)
    t0 = time.monotonic()
    with pytest.raises(BmcError):
        asyncio.run(retrying(policy, call))
    took = time.monotonic() - t0
    assert took < 0.6 and 5 <= calls[0] <= 16, (took, calls[0])
    # within the deadline, a run of failures followed by a success succeeds
    call, calls = failing([BmcError("500", transient=True)] * 5)
    assert asyncio.run(retrying(policy, call)) == "ok" and calls[0] == 6


def test_within_gives_a_step_deadline_and_no_count() -> None:
    p = FAST.within(2.5)
    assert p.deadline_s == 2.5 and p.attempts is None and p.backoff_s == FAST.backoff_s
    assert FAST.within(-1.0).deadline_s == 0.0


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_below_it() -> None:
    p = RetryPolicy(backoff_s=0.5, backoff_max_s=3.0)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    j = RetryPolicy(backoff_s=0.5, backoff_max_s=3.0, jitter=True)
    rng = random.Random(1)
    draws = [j.delay(3, rng) for _ in range(200)]
    assert all(0 <= d <= 2.0 for d in draws) and len(set(draws)) > 100


def test_waits_follow_the_backoff_or_the_failure_s_hint_capped() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    seen: list[tuple[int, float]] = []
    p = RetryPolicy(attempts=4, backoff_s=1.0, backoff_max_s=10.0, retry_after_cap_s=5.0)
    call, _ = failing([BmcError("500", transient=True), BmcError("503", transient=True, status=503),
                       BmcError("500", transient=True)])
    hint = {503: 30.0}
    assert asyncio.run(retrying(p, call, sleep=sleep,
                                wait_hint=lambda e: hint.get(getattr(e, "status", None) or 0),
                                before_sleep=lambda n, e, w: seen.append((n, w)))) == "ok"
    assert slept == [1.0, 5.0, 4.0]  # backoff 1, the 503's 30 s capped at 5, backoff 4
    assert seen == [(1, 1.0), (2, 5.0), (3, 4.0)]


def test_the_decorator_retries_each_call() -> None:
    calls = [0]

    @retry_async(FAST)
    async def read(x: int) -> int:
        calls[0] += 1
        if calls[0] % 2:
            raise KubeApiUnreachable("no answer")
        return x * 2

    async def main() -> list[int]:
        return [await read(1), await read(2)]

    assert asyncio.run(main()) == [2, 4] and calls[0] == 4


def test_nothing_retries_forever() -> None:
    with pytest.raises(ValueError, match="nothing retries forever"):
        RetryPolicy(attempts=None)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_an_async_hook_is_awaited_before_each_wait() -> None:
    recorded: list[tuple[int, str]] = []

    async def record(attempt: int, err: BaseException, wait: float) -> None:
        await asyncio.sleep(0)
        recorded.append((attempt, str(err)))

    call, calls = failing([BmcError("a", transient=True), BmcError("b", transient=True)])
    assert asyncio.run(retrying(FAST, call, before_sleep=record)) == "ok" and calls[0] == 3
    assert recorded == [(1, "a"), (2, "b")]
