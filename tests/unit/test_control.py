"""RemoteCalls: correlation ids, answers, errors and the bound on calls in flight."""

from __future__ import annotations

import pytest

from fastapi_channels.control import RemoteCalls, reply_for
from fastapi_channels.exceptions import AuthorizationError, BackendError, ConnectionError


async def test_an_answer_resolves_the_call_it_names() -> None:
    calls = RemoteCalls()
    first: dict[str, object] = {"op": "join"}
    second: dict[str, object] = {"op": "leave"}
    first_id, first_future = calls.open(first, "srv-a")
    second_id, second_future = calls.open(second, "srv-a")
    assert first["reply_to"] == "srv-a" and first["id"] == first_id != second_id
    assert calls.settle(reply_for(second, None))
    assert second_future.done() and not first_future.done()
    assert len(calls) == 1
    assert not calls.settle(reply_for(second, None))  # answered twice: nobody waits any more


async def test_the_owners_error_is_raised_at_the_caller() -> None:
    calls = RemoteCalls()
    command: dict[str, object] = {"op": "join"}
    _, future = calls.open(command, "srv-a")
    refusal = AuthorizationError("nope", error_code="JOIN_FORBIDDEN", details={"group": "secret"})
    calls.settle(reply_for(command, refusal))
    with pytest.raises(AuthorizationError) as raised:
        await future
    assert raised.value.error_code == "JOIN_FORBIDDEN" and raised.value.details == {"group": "secret"}


async def test_calls_in_flight_are_bounded() -> None:
    calls = RemoteCalls(limit=2)
    calls.open({}, "s")
    call_id, _ = calls.open({}, "s")
    with pytest.raises(BackendError) as raised:
        calls.open({}, "s")
    assert raised.value.error_code == "REMOTE_BUSY"
    calls.close(call_id)
    calls.open({}, "s")


async def test_fail_all_ends_every_wait() -> None:
    calls = RemoteCalls()
    futures = [calls.open({}, "s")[1] for _ in range(3)]
    calls.fail_all(ConnectionError("stopped"))
    for future in futures:
        with pytest.raises(ConnectionError):
            await future
    assert len(calls) == 0
