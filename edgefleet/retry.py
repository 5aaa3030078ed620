"""The one retry policy of edgefleet: which failures are tried again, how often, how far apart, and
until when. Built on tenacity; every adapter that retries (the Redfish connector, the Talos API
client, the Prefect scheduling adapter, the Redfish driver's reads) goes through ``retrying``.

Whether a failure is retried is a property of the exception, not of the call site: an
``EdgefleetError`` whose ``transient`` is True (see ``edgefleet.errors``) may succeed when asked
again, anything else is raised at once. A caller narrows that, never widens it: the connector
does not repeat an action (a POST) answered 500, because it may have been applied, although the
500 is transient; it passes ``retry_if=`` for that.

``RetryPolicy`` holds the parameters:

* ``attempts``: tries in all (``None``: as many as ``deadline_s`` allows);
* ``backoff_s`` / ``backoff_max_s``: the wait before try ``n + 1`` is ``backoff_s * 2 ** (n - 1)``,
  at most ``backoff_max_s``; with ``jitter`` a uniform draw between 0 and that ("full jitter");
* ``deadline_s``: no try starts after this many seconds from the first (``None``: attempts only);
  a policy with neither bound is refused: nothing retries forever;
* ``retry_after_cap_s``: the most a server's own hint (a 503's ``Retry-After``, passed as
  ``wait_hint``) may make us wait.

Async use (the rollout engine's loops can use it as they are)::

    from edgefleet.retry import RetryPolicy, retrying, retry_async

    policy = RetryPolicy(attempts=4, backoff_s=0.5)
    state = await retrying(policy, lambda: driver.power_state())          # one call, retried

    # the step's deadline instead of a count: keep reading until 90 s have passed
    state = await retrying(policy.within(90.0), driver.power_state, sleep=clock_sleep)

    # narrower than ``transient``: a write that may have run is repeated only when not delivered
    @retry_async(RetryPolicy(attempts=3), retry_if=lambda e: is_transient(e) and e.code == "UNAVAILABLE")
    async def bootstrap() -> None: ...

    # the rollout engine's sequence retry: at most ``reimage_attempts`` sequences, only after an
    # action the connector sent once, each retry recorded (an async hook) and slept on its clock
    async def record(attempt: int, err: BaseException, wait: float) -> None:
        await self._event("reimage_retry", ..., reason=str(err), detail={"attempt": attempt})

    res = await retrying(RetryPolicy(attempts=s.reimage_attempts, backoff_s=s.bmc_backoff_s),
                         lambda: self._sequence(store, driver, image_url, seed_url),
                         retry_if=lambda e: is_transient(e) and e.attempts < s.bmc_attempts,
                         before_sleep=record, sleep=self._sleep)

``sleep`` replaces ``asyncio.sleep`` (a simulated clock, a test); ``rng`` makes the jitter
reproducible. The first try runs outside tenacity (a call that succeeds costs a plain await: the
Redfish connector sends thousands of requests a second in a fleet rollout); tenacity drives the
tries after a retryable failure. The last failure is raised as it is (never a ``RetryError``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import ParamSpec, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
)
from tenacity.stop import stop_base

from edgefleet.errors import EdgefleetError

__all__ = ["RetryPolicy", "is_transient", "retry_async", "retrying"]

T = TypeVar("T")
P = ParamSpec("P")

RetryIf = Callable[[BaseException], bool]
WaitHint = Callable[[BaseException], float | None]
BeforeSleep = Callable[[int, BaseException, float], Awaitable[None] | None]
Sleep = Callable[[float], Awaitable[None]]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says retrying may help: an ``EdgefleetError`` with ``transient`` set."""
    return isinstance(exc, EdgefleetError) and bool(exc.transient)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, how far apart and until when a transient failure is tried again (module
    docstring). ``attempts`` counts every try, the first included."""

    attempts: int | None = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    deadline_s: float | None = None
    jitter: bool = False
    retry_after_cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.attempts is None and self.deadline_s is None:
            raise ValueError("a retry policy needs attempts or deadline_s: nothing retries forever")
        if self.deadline_s is not None and self.deadline_s < 0:
            raise ValueError(f"deadline_s must not be negative, not {self.deadline_s}")
        if self.backoff_s < 0 or self.backoff_max_s < 0 or self.retry_after_cap_s < 0:
            raise ValueError("backoff_s, backoff_max_s and retry_after_cap_s must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        top = float(min(self.backoff_max_s, self.backoff_s * (2 ** (attempt - 1))))
        if not self.jitter:
            return top
        return (rng or random).uniform(0, top)

    def within(self, deadline_s: float, *, attempts: int | None = None) -> RetryPolicy:
        """This policy bounded by a step's deadline: tries until ``deadline_s`` has passed
        (``attempts``: a count as well; by default none)."""
        return replace(self, deadline_s=max(0.0, deadline_s), attempts=attempts)


def _stop(policy: RetryPolicy, tries_done: int, elapsed_s: float) -> stop_base:
    """Tenacity's stop condition for the tries after the first ``tries_done``."""
    stop: stop_base = stop_never
    if policy.attempts is not None:
        stop = stop_after_attempt(max(1, policy.attempts - tries_done))
    if policy.deadline_s is not None:
        stop = stop | stop_before_delay(max(0.0, policy.deadline_s - elapsed_s))
    return stop


async def _announce(hook: BeforeSleep | None, attempt: int, exc: BaseException, wait: float) -> None:
    if hook is not None:
        result = hook(attempt, exc, wait)
        if inspect.isawaitable(result):
            await result


async def retrying(policy: RetryPolicy, fn: Callable[[], Awaitable[T]], *, retry_if: RetryIf = is_transient,
                   wait_hint: WaitHint | None = None, before_sleep: BeforeSleep | None = None,
                   sleep: Sleep = asyncio.sleep, rng: random.Random | None = None) -> T:
    """``await fn()``, tried again after a failure ``retry_if`` accepts (default: a transient
    ``EdgefleetError``) as ``policy`` allows; the last failure is raised as it is.

    ``wait_hint(exc)``: a wait the failure itself asks for (a 503's Retry-After), capped at
    ``policy.retry_after_cap_s``, instead of the backoff. ``before_sleep(attempt, exc, wait)``: called
    before each wait, and awaited when it is a coroutine function (to log, or to record the retry)."""
    start = time.monotonic()
    try:
        return await fn()
    except Exception as e:  # re-raised below unless the policy retries it
        first = e
    if not retry_if(first) or policy.attempts == 1:
        raise first

    def wait_for(attempt: int, exc: BaseException | None) -> float:
        hint = wait_hint(exc) if wait_hint is not None and exc is not None else None
        return min(hint, policy.retry_after_cap_s) if hint is not None else policy.delay(attempt, rng)

    pause = wait_for(1, first)
    if policy.deadline_s is not None and time.monotonic() - start + pause >= policy.deadline_s:
        raise first
    await _announce(before_sleep, 1, first, pause)
    await sleep(pause)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return wait_for(state.attempt_number + 1, exc)

    async def announce(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            await _announce(before_sleep, state.attempt_number + 1, exc, state.upcoming_sleep)

    retryer = AsyncRetrying(sleep=sleep, stop=_stop(policy, 1, time.monotonic() - start), wait=wait,
                            retry=retry_if_exception(retry_if), before_sleep=announce, reraise=True)
    async for attempt in retryer:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover


def retry_async(policy: RetryPolicy, *, retry_if: RetryIf = is_transient, wait_hint: WaitHint | None = None,
                before_sleep: BeforeSleep | None = None,
                sleep: Sleep = asyncio.sleep) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: every call of the async function is run through ``retrying`` with ``policy``."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await retrying(policy, lambda: fn(*args, **kwargs), retry_if=retry_if, wait_hint=wait_hint,
                                  before_sleep=before_sleep, sleep=sleep)

        return wrapper

    return decorate
