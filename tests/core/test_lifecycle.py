"""Connections come and go without leaving anything behind; limits refuse cleanly; shutdown
tells every client; get_manager() is clear about a missing manager."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastapi_channels import ConnectionManager, get_manager
from fastapi_channels import manager as manager_module
from fastapi_channels.exceptions import ConnectionError as ChannelsConnectionError
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.serving import FAST, SANSIO, LogCapture, StartServer, has_local_connections


def leftovers(manager: ConnectionManager, baseline_topics: frozenset[str]) -> dict[str, object]:
    """Everything a connection could leave behind in the manager and the memory backend."""
    hub = manager.backend.hub  # type: ignore[attr-defined]
    stats = manager.get_stats()
    return {
        "registry": list(manager.registry),
        "registry groups": list(manager.registry.groups()),
        "registry users": manager.registry.user_count(),
        "stats": (stats["connections"], stats["users"], stats["groups"], stats["buffered_messages"]),
        "topics": manager.subscribed_topics ^ baseline_topics,
        "hub connections": dict(hub.connections),
        "hub users": dict(hub.users),
        "hub groups": dict(hub.groups),
        "hub subscribers": set(hub.subscribers) ^ baseline_topics,
        "fast-path index": set(manager._fast_channels),  # private, but an index all the same
    }


CLEAN = {
    "registry": [],
    "registry groups": [],
    "registry users": 0,
    "stats": (0, 0, 0, 0),
    "topics": frozenset(),
    "hub connections": {},
    "hub users": {},
    "hub groups": {},
    "hub subscribers": set(),
    "fast-path index": set(),
}


# The library's code differs between the ASGI path and the fast path; uvicorn's two own
# protocols share the ASGI path, so its sans-I/O one stands for both here.
@pytest.mark.parametrize("ws", [SANSIO, FAST], ids=["sansio", "fastpath"])
async def test_a_thousand_connect_disconnect_cycles_leave_no_trace(
    start_server: StartServer, ws: str
) -> None:
    async with start_server(ws=ws) as (server, manager):
        baseline_topics = manager.subscribed_topics
        baseline_tasks = len(asyncio.all_tasks())
        assert leftovers(manager, baseline_topics) == CLEAN

        batch, rounds = 50, 20
        for round_ in range(rounds):
            clients = await asyncio.gather(
                *(Client.open(server, f"user{(round_ * batch + i) % 7}") for i in range(batch))
            )
            for index, client in enumerate(clients):
                await client.send(op="join", group=f"room{index % 5}")
                await client.send(op="join", group=f"solo{round_}-{index}")  # a group of one
            for client in clients:
                assert [(await client.next())["type"] for _ in range(2)] == ["joined", "joined"]
            assert len(manager.registry) == batch

            # A third leave politely, a third are closed by the server, a third vanish
            # (TCP dropped with no close frame, as a phone going out of coverage).
            polite, kicked, vanished = clients[0::3], clients[1::3], clients[2::3]
            for client in vanished:
                client.ws.transport.abort()
            await asyncio.gather(
                *(client.close() for client in polite),
                *(manager.disconnect(client.channel_name) for client in kicked),
            )
            await asyncio.gather(*(client.close() for client in clients))
            Client.opened.clear()

        await eventually(
            lambda: len(manager.registry) == 0 and len(asyncio.all_tasks()) <= baseline_tasks,
            what="every connection and its tasks to be gone",
        )
        assert leftovers(manager, baseline_topics) == CLEAN
        stats = manager.get_stats()
        assert stats["connections_opened"] == stats["connections_closed"] == batch * rounds
        assert len(asyncio.all_tasks()) == baseline_tasks

        # And the server still works.
        late = await Client.open(server, "late")
        await late.call("joined", op="join", group="room0")
        await manager.send_to_group("room0", {"type": "group", "data": "still works"})
        assert await late.next() == {"type": "group", "data": "still works"}


async def test_the_third_connection_of_a_user_is_refused_with_1013(start_server: StartServer) -> None:
    async with start_server(MAX_CONNECTIONS_PER_CLIENT=2) as (server, manager):
        first = await Client.open(server, "alice")
        await Client.open(server, "alice")

        code, reason = await Client.open_refused(server, "alice")

        assert (code, reason) == (1013, "CONNECTION_LIMIT_EXCEEDED")
        assert len(await manager.get_user_connections("alice")) == 2
        assert manager.get_stats()["connections_refused"] == 1
        await Client.open(server, "bob")  # other users are not affected
        # A slot comes back when one of alice's connections ends.
        await first.close()
        await eventually(lambda: has_local_connections(manager, "alice", 1), what="the slot")
        await Client.open(server, "alice")
        assert await manager.count_user_connections("alice") == 2


async def test_a_burst_of_connections_of_one_user_admits_exactly_the_limit(start_server: StartServer) -> None:
    async with start_server(MAX_CONNECTIONS_PER_CLIENT=2) as (server, manager):

        async def attempt() -> tuple[int | None, str | None] | Client:
            try:
                return await Client.open(server, "alice")
            except ConnectionClosed as closed:
                assert closed.rcvd is not None, "refused without a close frame"
                return closed.rcvd.code, closed.rcvd.reason

        outcomes = await asyncio.gather(*(attempt() for _ in range(10)))

        admitted = [o for o in outcomes if isinstance(o, Client)]
        assert len(admitted) == 2
        assert [o for o in outcomes if not isinstance(o, Client)] == [(1013, "CONNECTION_LIMIT_EXCEEDED")] * 8
        assert len(await manager.get_user_connections("alice")) == 2
        assert await manager.count_user_connections("alice") == 2


async def test_connections_beyond_the_total_limit_are_refused_with_1013(start_server: StartServer) -> None:
    async with start_server(MAX_TOTAL_CONNECTIONS=3) as (server, manager):
        clients = [await Client.open(server, f"user{i}") for i in range(3)]

        assert await Client.open_refused(server, "user3") == (1013, "CONNECTION_LIMIT_EXCEEDED")
        assert await Client.open_refused(server, "user0") == (1013, "CONNECTION_LIMIT_EXCEEDED")

        assert len(manager.registry) == 3
        assert manager.get_stats()["connections_refused"] == 2
        for client in clients:  # the admitted ones are untouched
            assert await client.echo_marker("ok") == {"type": "echo", "data": "ok"}
        await clients[0].close()
        await eventually(lambda: len(manager.registry) == 2, what="the freed slot")
        await Client.open(server, "user3")


async def test_disconnect_by_channel_name_closes_with_the_given_code(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        admin, target = await Client.open(server, "admin"), await Client.open(server, "target")
        await target.call("joined", op="join", group="room")

        await admin.send(op="disconnect", channel=target.channel_name, code=4003)

        assert (await target.wait_closed())[0] == 4003
        await eventually(lambda: manager.get_connection(target.channel_name) is None, what="cleanup")
        assert manager.get_group_connections("room") == [] and manager.get_stats()["groups"] == 0
        await manager.disconnect(target.channel_name)  # idempotent: already gone, no error
        assert await admin.echo_marker("m") == {"type": "echo", "data": "m"}


async def test_a_refused_connection_logs_no_traceback(
    start_server: StartServer, server_log: LogCapture
) -> None:
    def add_a_failing_endpoint(app: FastAPI) -> None:
        @app.websocket("/boom")
        async def boom(websocket: WebSocket) -> None:
            await websocket.accept()
            raise RuntimeError("boom")

    async with start_server(
        MAX_CONNECTIONS_PER_CLIENT=1, MAX_TOTAL_CONNECTIONS=2, extend=add_a_failing_endpoint
    ) as (server, manager):
        await Client.open(server, "alice")
        assert await Client.open_refused(server, "alice") == (1013, "CONNECTION_LIMIT_EXCEEDED")  # per user
        await Client.open(server, "bob")
        assert await Client.open_refused(server, "carol") == (1013, "CONNECTION_LIMIT_EXCEEDED")  # total
        assert manager.get_stats()["connections_refused"] == 2
        assert server_log.tracebacks() == []

        # The same capture does see an endpoint that really fails: the check above can fail.
        async with connect(f"{server.ws_url}/boom") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        await eventually(lambda: bool(server_log.tracebacks()), what="the traceback of /boom")
        assert any("Exception in ASGI application" in text for text in server_log.tracebacks())


async def test_stop_tasks_closes_every_client_with_1001(start_server: StartServer, ws: str) -> None:
    async with start_server(ws=ws) as (server, manager):
        clients = [await Client.open(server, f"user{i % 2}") for i in range(4)]
        for client in clients:
            await client.call("joined", op="join", group="room")

        await manager.stop_tasks(timeout=5)  # what the app's lifespan does on shutdown

        for client in clients:
            assert await client.wait_closed() == (1001, "server shutting down")
        assert leftovers(manager, frozenset()) == {**CLEAN, "topics": frozenset()}
        assert manager.get_stats()["started"] is False


async def test_leaving_serve_sends_every_client_a_close_frame(start_server: StartServer, ws: str) -> None:
    """Never a bare TCP drop. uvicorn's own protocols close every socket with 1012 (service
    restart) before the lifespan runs (README, close codes); the fast path says 1001."""
    async with start_server(ws=ws) as (server, manager):
        clients = [await Client.open(server, f"user{i}") for i in range(4)]
        for client in clients:
            await client.call("joined", op="join", group="room")
        readers = [asyncio.ensure_future(client.wait_closed(timeout=15)) for client in clients]
    codes = await asyncio.gather(*readers)
    assert [code for code, _ in codes] == [1001 if ws == FAST else 1012] * len(clients)
    assert len(manager.registry) == 0


async def test_get_manager_before_any_manager_exists_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, start_server: StartServer
) -> None:
    monkeypatch.setattr(manager_module, "_default_manager", None)
    with pytest.raises(RuntimeError, match="no ConnectionManager exists yet"):
        get_manager()
    # The first manager created from then on is the one get_manager() returns.
    async with start_server() as (_, first), start_server() as (_, second):
        assert get_manager() is first and first is not second


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 1004, 2000, 5000])
async def test_a_disconnect_with_a_code_no_close_frame_can_carry_closes_with_1000(
    start_server: StartServer, ws: str, code: int
) -> None:
    """README: 1005, 1006 and 1015 are reserved and never sent. Asked for anyway (or any code
    outside what a close frame carries), the client used to get no close frame at all."""
    async with start_server(ws=ws) as (server, manager):
        client = await Client.open(server, "kicked")
        await manager.disconnect(client.channel_name, code, "bye")
        assert (await client.wait_closed())[0] == 1000
        await eventually(lambda: manager.get_connection(client.channel_name) is None, what="cleanup")


@pytest.mark.parametrize("reason", ["é" * 120, "x" * 500, "🙂" * 40, "a\udcffb"])
async def test_a_long_or_odd_close_reason_is_cut_to_fit_and_the_close_frame_goes_out(
    start_server: StartServer, ws: str, reason: str
) -> None:
    """A close frame carries 123 bytes of reason: cut by characters, a reason of 120 `é` was
    240 bytes and the close could not be sent at all (the client saw 1006)."""
    async with start_server(ws=ws) as (server, manager):
        client = await Client.open(server, "kicked")
        await manager.disconnect(client.channel_name, 4321, reason)
        code, received = await client.wait_closed()
        assert code == 4321
        assert received is not None and len(received.encode()) <= 123
        assert reason.startswith(received) or "\udcff" in reason


async def test_a_join_whose_connection_closes_meanwhile_raises_connection_closed(
    start_server: StartServer, ws: str
) -> None:
    """README: join_group returns once done. A connection that closed while its (async)
    authorizer ran used to get an empty JoinResult, as if joined (20 of 20 in review)."""
    async with start_server(ws=ws) as (server, manager):
        client = await Client.open(server, "leaving")
        name = client.channel_name
        release = asyncio.Event()

        async def authorize(_connection: object, _group: str) -> bool:
            await release.wait()
            return True

        manager.authorize_join = authorize
        join = asyncio.create_task(manager.join_group(name, "room"))
        await asyncio.sleep(0)  # the join is waiting for the authorizer
        await client.close()
        await eventually(lambda: manager.get_connection(name) is None, what="the close")
        release.set()
        with pytest.raises(ChannelsConnectionError) as raised:
            await join
        assert raised.value.error_code == "CONNECTION_CLOSED"
        assert await manager.group_size("room") == 0
