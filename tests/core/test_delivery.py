"""Who receives what: groups, users, one connection, everyone; in order; until they leave.

"Receives nothing" is checked with a marker: the client asks the server for an echo, and the
echo must be the very next frame it gets.
"""

from __future__ import annotations

from fastapi_channels import WSConfig
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.serving import StartServer, has_local_connections


async def test_group_fan_out_reaches_members_only(start_server: StartServer, ws: str) -> None:
    async with start_server(ws=ws) as (server, manager):
        members = [await Client.open(server, f"member{i % 3}") for i in range(6)]
        loner = await Client.open(server, "loner")  # in no group
        elsewhere = await Client.open(server, "elsewhere")  # in another group
        for member in members:
            await member.call("joined", op="join", group="room")
        await elsewhere.call("joined", op="join", group="other-room")

        # A member sends through its socket ...
        await members[0].send(op="group", group="room", data="from a member")
        for member in members:
            assert await member.next() == {"type": "group", "data": "from a member"}
        # ... and a background job through the manager.
        await manager.send_to_group("room", {"type": "group", "data": "from the server"})
        for member in members:
            assert await member.next() == {"type": "group", "data": "from the server"}
        for outsider in (loner, elsewhere):
            assert await outsider.echo_marker("nothing before me") == {
                "type": "echo",
                "data": "nothing before me",
            }
        assert len(manager.get_group_connections("room")) == 6
        assert await manager.group_size("room") == 6


async def test_messages_of_one_sender_arrive_in_order_at_every_member(
    start_server: StartServer, ws: str
) -> None:
    async with start_server(ws=ws) as (server, manager):
        sender = await Client.open(server, "sender")
        others = [await Client.open(server, f"reader{i}") for i in range(3)]
        everyone = [sender, *others]
        for client in everyone:
            await client.call("joined", op="join", group="room")

        for sequence in range(200):  # a client, through its socket ...
            await sender.send(op="group", group="room", data=sequence)
        for client in everyone:
            assert [(await client.next())["data"] for _ in range(200)] == list(range(200))

        for sequence in range(200):  # ... and a background job, through the manager
            await manager.send_to_group("room", {"type": "group", "data": sequence})
        for client in everyone:
            assert [(await client.next())["data"] for _ in range(200)] == list(range(200))


async def test_two_senders_interleaved_each_keep_their_order(start_server: StartServer, ws: str) -> None:
    async with start_server(ws=ws) as (server, _):
        a, b, reader = [await Client.open(server, name) for name in ("a", "b", "reader")]
        for client in (a, b, reader):
            await client.call("joined", op="join", group="room")
        for sequence in range(100):
            await a.send(op="group", group="room", data=["a", sequence])
            await b.send(op="group", group="room", data=["b", sequence])
        for client in (a, b, reader):
            seen: dict[str, list[int]] = {"a": [], "b": []}
            for _ in range(200):
                who, sequence = (await client.next())["data"]
                seen[who].append(sequence)
            assert seen == {"a": list(range(100)), "b": list(range(100))}


async def test_send_to_user_reaches_every_connection_of_the_user_and_counts_them(
    start_server: StartServer,
) -> None:
    async with start_server() as (server, manager):
        phone = await Client.open(server, "alice")
        laptop = await Client.open(server, "alice")
        tablet = await Client.open(server, "alice")
        bob = await Client.open(server, "bob")

        reply = await bob.call("user_sent", op="user", user="alice", data="hi alice")

        assert reply["count"] == 3
        for device in (phone, laptop, tablet):
            assert await device.next() == {"type": "user", "data": "hi alice"}
        assert await bob.echo_marker("m") == {"type": "echo", "data": "m"}
        assert await manager.send_to_user("alice", {"type": "user", "data": "again"}) == 3
        for device in (phone, laptop, tablet):
            assert await device.next() == {"type": "user", "data": "again"}
        assert len(await manager.get_user_connections("alice")) == 3
        assert await manager.send_to_user("nobody", {"type": "user"}) == 0

        await tablet.close()
        await eventually(lambda: has_local_connections(manager, "alice", 2), what="the close")
        assert await manager.send_to_user("alice", {"type": "user", "data": "two left"}) == 2


async def test_broadcast_reaches_everyone(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        clients = [await Client.open(server, f"user{i}") for i in range(5)]
        await clients[0].call("joined", op="join", group="room")  # membership does not matter
        await clients[1].send(op="broadcast", data="hello all")
        for client in clients:
            assert await client.next() == {"type": "broadcast", "data": "hello all"}
        await manager.broadcast({"type": "broadcast", "data": "from the server"})
        for client in clients:
            assert await client.next() == {"type": "broadcast", "data": "from the server"}


async def test_send_personal_by_channel_name_reaches_that_connection_only(
    start_server: StartServer,
) -> None:
    async with start_server() as (server, manager):
        alice1 = await Client.open(server, "alice")
        alice2 = await Client.open(server, "alice")  # same user, another connection
        bob = await Client.open(server, "bob")
        assert len({alice1.channel_name, alice2.channel_name, bob.channel_name}) == 3

        await bob.send(op="personal", to=alice2.channel_name, data="psst")
        assert await alice2.next() == {"type": "personal", "data": "psst"}
        assert await alice1.echo_marker("m") == {"type": "echo", "data": "m"}
        assert await bob.echo_marker("m") == {"type": "echo", "data": "m"}

        assert await manager.send_personal(alice1.channel_name, {"type": "personal", "data": 1}) is True
        assert await alice1.next() == {"type": "personal", "data": 1}
        assert await manager.send_personal(bob.channel_name, "plain text") is True  # a text frame
        assert await bob.next() == "plain text"
        assert await manager.send_personal(bob.channel_name, b"\x00\x01") is True  # a binary frame
        assert await bob.next() == b"\x00\x01"
        assert await manager.send_personal(f"{manager.server_id}!no-such-connection", {"x": 1}) is False


async def test_send_group_except_skips_the_sender(start_server: StartServer) -> None:
    async with start_server() as (server, _):
        sender, other = await Client.open(server, "sender"), await Client.open(server, "other")
        for client in (sender, other):
            await client.call("joined", op="join", group="room")
        await sender.send(op="group_except", group="room", data="not to myself")
        assert await other.next() == {"type": "group", "data": "not to myself"}
        assert await sender.echo_marker("m") == {"type": "echo", "data": "m"}


async def test_leave_stops_delivery(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        stays, leaves = await Client.open(server, "stays"), await Client.open(server, "leaves")
        for client in (stays, leaves):
            await client.call("joined", op="join", group="room")
        await manager.send_to_group("room", {"type": "group", "data": "both"})
        for client in (stays, leaves):
            assert await client.next() == {"type": "group", "data": "both"}

        await leaves.call("left", op="leave", group="room")
        await manager.send_to_group("room", {"type": "group", "data": "after the leave"})

        assert await stays.next() == {"type": "group", "data": "after the leave"}
        assert await leaves.echo_marker("m") == {"type": "echo", "data": "m"}
        assert [c.channel_name for c in manager.get_group_connections("room")] == [stays.channel_name]

        await stays.call("left", op="leave", group="room")  # the last member: the group is gone
        assert manager.get_stats()["groups"] == 0
        assert await manager.group_size("room") == 0


async def test_text_and_binary_frames_of_every_length_form_arrive_intact(
    start_server: StartServer, ws: str
) -> None:
    """RFC 6455 writes a payload length in 7 bits, 16 bits or 64 bits: sizes on each side."""
    async with start_server(ws=ws) as (server, manager):
        client = await Client.open(server, "a", max_size=None)
        await client.call("joined", op="join", group="room")
        for size in (125, 126, 65535, 65536, 300_000):
            await manager.send_to_group("room", "é" * size)
            assert await client.next() == "é" * size
            await manager.send_to_group("room", bytes(range(256)) * (size // 256 + 1))
            assert await client.next() == bytes(range(256)) * (size // 256 + 1)


async def test_a_message_within_the_size_limit_reaches_healthy_members(start_server: StartServer) -> None:
    """Default settings: clients may send frames up to WS_MAX_MESSAGE_SIZE (10 MiB; the CLI passes
    it to uvicorn as --ws-max-size); relaying one such message must not look like slowness."""
    config_defaults = WSConfig(LOG_STATS=False)
    size = 5 * 1024 * 1024
    assert size < config_defaults.WS_MAX_MESSAGE_SIZE
    async with start_server(uvicorn={"ws_max_size": config_defaults.WS_MAX_MESSAGE_SIZE}) as (
        server,
        manager,
    ):
        sender = await Client.open(server, "sender", max_size=None)
        reader = await Client.open(server, "reader", max_size=None)
        for client in (sender, reader):
            await client.call("joined", op="join", group="room")

        await sender.send(op="group", group="room", data="x" * size)

        for client in (sender, reader):
            frame = await client.next(timeout=10)
            assert frame == {"type": "group", "data": "x" * size}, str(frame)[:200]
        stats = manager.get_stats()
        assert (stats["slow_consumer_closes"], stats["messages_dropped"]) == (0, 0)


async def test_sizes_sent_count_payloads_alike_on_every_protocol(start_server: StartServer, ws: str) -> None:
    """bytes_sent (and the outbound bound) count a frame's payload, on the fast path too, where
    frames are queued with their header: sizes of 5, 200 and 70,000 ASCII characters take
    each of the three header lengths there."""
    async with start_server(ws=ws) as (server, manager):
        client = await Client.open(server, "sizes")
        [connection] = await manager.get_user_connections("sizes")
        await client.call("joined", op="join", group="room")
        before = connection.bytes_sent, manager.get_stats()["bytes_sent"]
        texts = ["x" * 5, "y" * 200, "z" * 70_000]
        for text in texts:
            await manager.send_to_group("room", text)
        for text in texts:
            assert await client.next() == text
        sent = sum(len(text) for text in texts)
        after = connection.bytes_sent, manager.get_stats()["bytes_sent"]
        assert (after[0] - before[0], after[1] - before[1]) == (sent, sent)
        assert connection.buffered_bytes == 0
