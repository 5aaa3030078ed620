"""``BmcError.attempts``: how often the connector sent the failed request. The rollout engine starts
a node's Redfish sequence again only after an action the connector sent once (it may not repeat a
reset answered 500, or cut off mid-answer), not after a BMC that failed every attempt."""

from __future__ import annotations

import pytest

from edgefleet.errors import BmcError
from edgefleet.redfish import BmcClients
from tests.contract.test_redfish_faults import Reply, T, connector, raw_server, run

RESET = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"


@pytest.mark.parametrize(("method", "reply", "sent"), [
    ("POST", Reply(500, {"error": {"message": "internal"}}), 1),  # an action: not repeated
    ("POST", Reply(action="close"), 1),  # cut off: it may have been applied
    ("POST", Reply(503, {"error": {"message": "busy"}}), 3),  # not processed: repeated
    ("GET", Reply(500, {"error": {"message": "internal"}}), 3),
    ("GET", Reply(action="close"), 3),
])
def test_attempts_say_whether_the_connector_repeated_the_request(method: str, reply: Reply, sent: int) -> None:
    async def main() -> None:
        async with raw_server(lambda r: reply) as (url, seen), BmcClients(T) as clients:
            conn = connector(url, clients, attempts=3)
            with pytest.raises(BmcError) as ei:
                if method == "POST":
                    await conn.post(RESET, {"ResetType": "ForceRestart"}, "reset")
                else:
                    await conn.get("/redfish/v1/Systems/1", "get power state")
            assert ei.value.transient and ei.value.attempts == sent == len(seen), (ei.value, len(seen))

    run(main())


def test_a_call_past_its_deadline_counts_as_every_attempt_made() -> None:
    async def main() -> None:
        async with raw_server(lambda r: Reply(action="hang")) as (url, _seen), BmcClients(T) as clients:
            with pytest.raises(BmcError) as ei:
                await connector(url, clients, attempts=3, deadline_s=0.5).get("/redfish/v1/Systems/1", "get")
            assert ei.value.transient and ei.value.attempts == 3 and "call deadline" in str(ei.value)

    run(main())
