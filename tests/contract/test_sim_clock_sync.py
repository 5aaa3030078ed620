"""The engine's copy of the simulator's clock stays close to the simulator's own when the
simulator answers slowly (a loaded machine): at 3600x, a slow answer taken at face value puts the
engine's clock behind by the answer's delay times 3600, and the window checks with it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.rollout.endpoints import SimClockClient as SimClock

SCALE = 3600.0
BASE = datetime(2026, 11, 4, 1, 0, tzinfo=UTC)


class _Clock(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, slow: int, delay: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mono0 = time.monotonic()
        self.slow, self.delay, self.calls = slow, delay, 0

    def now(self) -> datetime:
        return BASE + timedelta(seconds=(time.monotonic() - self.mono0) * SCALE)


class _Handler(BaseHTTPRequestHandler):
    server: _Clock

    def do_GET(self) -> None:
        self.server.calls += 1
        body = json.dumps({"now": self.server.now().isoformat(), "time_scale": SCALE}).encode()
        if self.server.calls <= self.server.slow:
            time.sleep(self.server.delay)  # the answer is read now, delivered late (a busy machine)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_clock() -> Iterator[_Clock]:
    srv = _Clock(slow=2, delay=0.4)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_slow_answer_does_not_set_the_clock_back(slow_clock: _Clock) -> None:
    clock = SimClock(f"http://127.0.0.1:{slow_clock.server_address[1]}", samples=5)
    asyncio.run(clock.sync())
    error = abs((clock() - slow_clock.now()).total_seconds())
    # Taken at face value, the first answer (0.4 s late) would be 24 simulated minutes behind.
    assert error < 5 * 60, f"engine clock off by {error:.0f} simulated seconds"
    assert clock.uncertainty < timedelta(minutes=5)
    assert clock.scale == SCALE
    assert slow_clock.calls == 5


def test_one_sample_reports_its_uncertainty(slow_clock: _Clock) -> None:
    clock = SimClock(f"http://127.0.0.1:{slow_clock.server_address[1]}", samples=1)
    asyncio.run(clock.sync())
    # The only answer was 0.4 s late: half of that, in simulated time, is what the clock may be off.
    assert clock.uncertainty >= timedelta(seconds=0.4 / 2 * SCALE)
    error = abs((clock() - slow_clock.now()).total_seconds())
    assert error <= clock.uncertainty.total_seconds() + 60
