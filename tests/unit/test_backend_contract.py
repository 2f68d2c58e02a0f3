"""The BaseBackend contract, run against every backend factory in CLUSTERS.

A test gets a `cluster`: a factory of started backends ("nodes") that share one cluster
state, as servers sharing one broker do: the memory backend (several backends on one hub)
and the Redis backend (several backends on the session's redis-server, one key prefix).

Tests only use what every backend promises: channel names made by `new_channel_name` for the
node that owns them, state read back through the backend's own methods, and delivery checked
with a marker (`flush`), never by waiting a while: asynchronous brokers deliver after
`publish` returns, and a fixed sleep can neither prove that nothing arrived nor be long
enough on a loaded machine.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from fastapi_channels.backends import Admission, BaseBackend, MemoryBackend, MemoryHub
from fastapi_channels.routing import group_topic, new_channel_name, user_topic
from tests.support.eventually import eventually


class Node:
    """One started backend: a server of the cluster, recording what it receives."""

    def __init__(self, backend: BaseBackend, server_id: str) -> None:
        self.backend = backend
        self.server_id = server_id
        self.received: list[tuple[str, bytes]] = []
        self.started = False

    def on_message(self, topic: str, payload: bytes) -> None:
        self.received.append((topic, payload))

    def channel(self) -> str:
        """A fresh channel name owned by this node."""
        return new_channel_name(self.server_id)

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.received if t == topic]

    async def start(self) -> None:
        await self.backend.start(self.server_id, self.on_message)
        self.started = True

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self.backend.stop()


class Cluster:
    """Backends made by `make_backend` share one cluster state."""

    def __init__(self, make_backend: Callable[[], BaseBackend]) -> None:
        self.make_backend = make_backend
        self.nodes: list[Node] = []
        self.tag = uuid.uuid4().hex[:6]

    async def node(self) -> Node:
        node = Node(self.make_backend(), f"srv{len(self.nodes)}-{self.tag}")
        self.nodes.append(node)
        await node.start()
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()


@asynccontextmanager
async def memory_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    hub = MemoryHub()
    cluster = Cluster(lambda: MemoryBackend(hub))
    try:
        yield cluster
    finally:
        await cluster.close()


ClusterFactory = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Cluster]]


@asynccontextmanager
async def redis_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    from fastapi_channels.backends.redis import RedisBackend

    server = request.getfixturevalue("redis_server")  # a redis-server of the session's own
    prefix = request.getfixturevalue("redis_prefix")
    cluster = Cluster(lambda: RedisBackend(server.url, prefix=prefix))
    try:
        yield cluster
    finally:
        await cluster.close()


CLUSTERS: dict[str, ClusterFactory] = {"memory": memory_cluster, "redis": redis_cluster}


@pytest.fixture(params=sorted(CLUSTERS))
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    async with CLUSTERS[request.param](request) as made:
        yield made


BIG = 10_000
ROOM = group_topic("room")
MARKERS = group_topic("markers")  # a topic a node listens on for markers only


async def flush(publisher: Node, topic: str, *receivers: Node) -> None:
    """Publish a marker on `topic` from `publisher`, wait until every receiver (each listening
    on `topic`) has it, and drop it from their `received`.

    A server receives one publisher's envelopes in the order they were published (the memory
    backend hands them over inside `publish`; Redis runs one publisher's PUBLISHes in order
    and pushes them down each server's one pub/sub connection in that order). So once the
    marker is in, whatever `publisher` published earlier has arrived, or never will:
    `received` is final up to the marker, and `== []` proves that nothing came. For a node
    that must not listen on the topic in question, the marker goes on a topic it does listen
    on (MARKERS): it travels the same connection.
    """
    marker = b"tmarker-" + uuid.uuid4().hex.encode()
    await publisher.backend.publish(topic, marker)
    await eventually(
        lambda: all((topic, marker) in node.received for node in receivers), what=f"the marker on {topic}"
    )
    for node in receivers:
        node.received.remove((topic, marker))


# --- topics -------------------------------------------------------------------------------------
async def test_publish_reaches_subscribers_only(cluster: Cluster) -> None:
    a, b, c = await cluster.node(), await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await b.backend.subscribe(ROOM)
    await c.backend.subscribe(group_topic("other"))
    assert (await c.backend.publish(ROOM, b"tpayload")).reached == 2  # a and b: not c
    await flush(c, ROOM, a, b)
    assert a.received == [(ROOM, b"tpayload")]
    assert b.received == [(ROOM, b"tpayload")]
    assert c.received == []


async def test_publish_without_subscribers_is_harmless(cluster: Cluster) -> None:
    a = await cluster.node()
    assert (await a.backend.publish(group_topic("nobody"), b"tx")).reached == 0
    assert a.received == []


async def test_publisher_receives_its_own_topic_when_subscribed(cluster: Cluster) -> None:
    a = await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.backend.publish(ROOM, b"tself")
    await flush(a, ROOM, a)
    assert a.received == [(ROOM, b"tself")]


async def test_subscribe_is_idempotent(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.backend.subscribe(ROOM)
    assert (await b.backend.publish(ROOM, b"tonce")).reached == 1
    await flush(b, ROOM, a)
    assert a.payloads(ROOM) == [b"tonce"]


async def test_unsubscribe_stops_delivery(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.backend.subscribe(MARKERS)
    await b.backend.publish(ROOM, b"t1")
    await flush(b, ROOM, a)
    await a.backend.unsubscribe(ROOM)
    await b.backend.publish(ROOM, b"t2")
    await flush(b, MARKERS, a)
    assert a.payloads(ROOM) == [b"t1"]


async def test_unsubscribe_is_idempotent_and_accepts_unknown_topics(cluster: Cluster) -> None:
    a = await cluster.node()
    await a.backend.subscribe(MARKERS)
    await a.backend.unsubscribe(group_topic("never"))
    await a.backend.subscribe(ROOM)
    await a.backend.unsubscribe(ROOM)
    await a.backend.unsubscribe(ROOM)
    await a.backend.publish(ROOM, b"tx")
    await flush(a, MARKERS, a)
    assert a.received == []


async def test_unsubscribe_is_per_server(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.backend.subscribe(MARKERS)
    await b.backend.subscribe(ROOM)
    await a.backend.unsubscribe(ROOM)
    await a.backend.publish(ROOM, b"tx")
    await flush(a, ROOM, b)
    await flush(a, MARKERS, a)
    assert a.received == []
    assert b.payloads(ROOM) == [b"tx"]


async def test_resubscribe_after_unsubscribe(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.backend.unsubscribe(ROOM)
    await a.backend.subscribe(ROOM)
    await b.backend.publish(ROOM, b"tback")
    await flush(b, ROOM, a)
    assert a.payloads(ROOM) == [b"tback"]


async def test_payload_bytes_and_order_are_preserved(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    payloads = [b"b" + bytes(range(256)), b"t" + "é✓".encode() * 1000, b"b\x00\n\r", b"b" + b"z" * 1_000_000]
    payloads += [f"t{i}".encode() for i in range(100)]
    for payload in payloads:
        await b.backend.publish(ROOM, payload)
    await flush(b, ROOM, a)
    assert a.payloads(ROOM) == payloads


async def test_topics_are_independent(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(group_topic("x"))
    await b.backend.subscribe(group_topic("y"))
    assert (await a.backend.publish(group_topic("y"), b"tfor-y")).reached == 1  # b only
    assert (await b.backend.publish(group_topic("x"), b"tfor-x")).reached == 1  # a only
    await flush(b, group_topic("x"), a)
    await flush(a, group_topic("y"), b)
    assert a.received == [(group_topic("x"), b"tfor-x")]
    assert b.received == [(group_topic("y"), b"tfor-y")]


# --- connection slots ---------------------------------------------------------------------------
async def test_add_connection_enforces_max_per_user(cluster: Cluster) -> None:
    a = await cluster.node()
    add = a.backend.add_connection
    assert await add(a.channel(), "alice", max_per_user=2, max_total=BIG) == Admission.ACCEPTED
    assert await add(a.channel(), "alice", max_per_user=2, max_total=BIG) == Admission.ACCEPTED
    assert await add(a.channel(), "alice", max_per_user=2, max_total=BIG) == Admission.USER_LIMIT
    assert await add(a.channel(), "bob", max_per_user=2, max_total=BIG) == Admission.ACCEPTED
    assert await a.backend.count_user_connections("alice") == 2
    assert await a.backend.count_user_connections("bob") == 1
    assert await a.backend.count_connections() == 3


async def test_add_connection_enforces_max_total(cluster: Cluster) -> None:
    a = await cluster.node()
    add = a.backend.add_connection
    assert await add(a.channel(), "u1", max_per_user=BIG, max_total=2) == Admission.ACCEPTED
    assert await add(a.channel(), None, max_per_user=BIG, max_total=2) == Admission.ACCEPTED
    assert await add(a.channel(), "u2", max_per_user=BIG, max_total=2) == Admission.TOTAL_LIMIT
    assert await add(a.channel(), None, max_per_user=BIG, max_total=2) == Admission.TOTAL_LIMIT
    assert await a.backend.count_connections() == 2
    assert await a.backend.count_user_connections("u2") == 0


async def test_limits_are_cluster_wide(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    assert (
        await a.backend.add_connection(a.channel(), "alice", max_per_user=2, max_total=3)
        == Admission.ACCEPTED
    )
    assert (
        await b.backend.add_connection(b.channel(), "alice", max_per_user=2, max_total=3)
        == Admission.ACCEPTED
    )
    assert (
        await a.backend.add_connection(a.channel(), "alice", max_per_user=2, max_total=3)
        == Admission.USER_LIMIT
    )
    assert (
        await a.backend.add_connection(a.channel(), "bob", max_per_user=2, max_total=3) == Admission.ACCEPTED
    )
    assert (
        await b.backend.add_connection(b.channel(), "carol", max_per_user=2, max_total=3)
        == Admission.TOTAL_LIMIT
    )
    for node in (a, b):
        assert await node.backend.count_connections() == 3
        assert await node.backend.count_user_connections("alice") == 2


async def test_add_connection_is_idempotent(cluster: Cluster) -> None:
    a = await cluster.node()
    channel = a.channel()
    for _ in range(3):
        assert (
            await a.backend.add_connection(channel, "alice", max_per_user=1, max_total=1)
            == Admission.ACCEPTED
        )
    assert await a.backend.count_connections() == 1
    assert await a.backend.count_user_connections("alice") == 1


async def test_refused_connection_takes_no_slot(cluster: Cluster) -> None:
    a = await cluster.node()
    await a.backend.add_connection(a.channel(), "alice", max_per_user=1, max_total=BIG)
    refused = a.channel()
    assert (
        await a.backend.add_connection(refused, "alice", max_per_user=1, max_total=BIG)
        == Admission.USER_LIMIT
    )
    assert await a.backend.count_connections() == 1
    await a.backend.remove_connection(refused, "alice")  # harmless: it holds nothing
    assert await a.backend.count_user_connections("alice") == 1
    assert await a.backend.count_connections() == 1


@pytest.mark.parametrize("spread", [1, 2], ids=["one-node", "two-nodes"])
async def test_concurrent_adds_respect_user_limit_exactly(cluster: Cluster, spread: int) -> None:
    nodes = [await cluster.node() for _ in range(spread)]
    attempts = [nodes[i % spread] for i in range(50)]
    results = await asyncio.gather(
        *(n.backend.add_connection(n.channel(), "alice", max_per_user=5, max_total=BIG) for n in attempts)
    )
    assert results.count(Admission.ACCEPTED) == 5
    assert results.count(Admission.USER_LIMIT) == 45
    assert await nodes[0].backend.count_user_connections("alice") == 5
    assert await nodes[0].backend.count_connections() == 5


@pytest.mark.parametrize("spread", [1, 2], ids=["one-node", "two-nodes"])
async def test_concurrent_adds_respect_total_limit_exactly(cluster: Cluster, spread: int) -> None:
    nodes = [await cluster.node() for _ in range(spread)]
    attempts = [nodes[i % spread] for i in range(50)]
    results = await asyncio.gather(
        *(
            n.backend.add_connection(n.channel(), f"user{i}", max_per_user=BIG, max_total=5)
            for i, n in enumerate(attempts)
        )
    )
    assert results.count(Admission.ACCEPTED) == 5
    assert results.count(Admission.TOTAL_LIMIT) == 45
    assert await nodes[0].backend.count_connections() == 5


async def test_remove_connection_frees_a_slot(cluster: Cluster) -> None:
    a = await cluster.node()
    first, second = a.channel(), a.channel()
    await a.backend.add_connection(first, "alice", max_per_user=2, max_total=2)
    await a.backend.add_connection(second, "alice", max_per_user=2, max_total=2)
    assert (
        await a.backend.add_connection(a.channel(), "alice", max_per_user=2, max_total=BIG)
        == Admission.USER_LIMIT
    )
    assert (
        await a.backend.add_connection(a.channel(), "bob", max_per_user=2, max_total=2)
        == Admission.TOTAL_LIMIT
    )

    await a.backend.remove_connection(first, "alice")
    assert await a.backend.count_connections() == 1
    assert await a.backend.count_user_connections("alice") == 1
    assert (
        await a.backend.add_connection(a.channel(), "alice", max_per_user=2, max_total=2)
        == Admission.ACCEPTED
    )


async def test_remove_connection_is_idempotent(cluster: Cluster) -> None:
    a = await cluster.node()
    channel = a.channel()
    await a.backend.add_connection(channel, "alice", max_per_user=5, max_total=5)
    await a.backend.remove_connection(channel, "alice")
    await a.backend.remove_connection(channel, "alice")
    await a.backend.remove_connection(a.channel(), None)
    assert await a.backend.count_connections() == 0
    assert await a.backend.count_user_connections("alice") == 0


async def test_anonymous_connections_count_only_toward_total(cluster: Cluster) -> None:
    a = await cluster.node()
    for _ in range(3):
        assert (
            await a.backend.add_connection(a.channel(), None, max_per_user=1, max_total=BIG)
            == Admission.ACCEPTED
        )
    assert await a.backend.count_connections() == 3


# --- groups -------------------------------------------------------------------------------------
async def test_group_membership_and_counts(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    c1, c2, c3 = a.channel(), a.channel(), b.channel()
    assert await a.backend.group_add("room", c1, max_groups=BIG) is True
    assert await a.backend.group_add("room", c2, max_groups=BIG) is True
    assert await b.backend.group_add("room", c3, max_groups=BIG) is True
    assert await b.backend.group_add("lobby", c3, max_groups=BIG) is True
    for node in (a, b):
        assert await node.backend.group_members("room") == {c1, c2, c3}
        assert await node.backend.group_size("room") == 3
        assert await node.backend.group_members("lobby") == {c3}
        assert await node.backend.count_groups() == 2
        assert await node.backend.group_members("none") == set()
        assert await node.backend.group_size("none") == 0


async def test_group_add_is_idempotent(cluster: Cluster) -> None:
    a = await cluster.node()
    channel = a.channel()
    assert await a.backend.group_add("room", channel, max_groups=1) is True
    assert await a.backend.group_add("room", channel, max_groups=1) is True
    assert await a.backend.group_size("room") == 1


async def test_group_discard_empties_and_removes_group(cluster: Cluster) -> None:
    a = await cluster.node()
    c1, c2 = a.channel(), a.channel()
    await a.backend.group_add("room", c1, max_groups=BIG)
    await a.backend.group_add("room", c2, max_groups=BIG)
    await a.backend.group_discard("room", c1)
    assert await a.backend.group_members("room") == {c2}
    assert await a.backend.count_groups() == 1
    await a.backend.group_discard("room", c2)
    await a.backend.group_discard("room", c2)  # idempotent
    await a.backend.group_discard("never", c2)
    assert await a.backend.group_members("room") == set()
    assert await a.backend.group_size("room") == 0
    assert await a.backend.count_groups() == 0


async def test_group_members_returns_a_copy(cluster: Cluster) -> None:
    a = await cluster.node()
    channel = a.channel()
    await a.backend.group_add("room", channel, max_groups=BIG)
    members = await a.backend.group_members("room")
    members.add("intruder!x")
    members.discard(channel)
    assert await a.backend.group_members("room") == {channel}


async def test_group_add_refuses_new_group_beyond_max_groups(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    c1, c2 = a.channel(), b.channel()
    assert await a.backend.group_add("g1", c1, max_groups=2) is True
    assert await b.backend.group_add("g2", c2, max_groups=2) is True
    # a new group at the limit: refused, nothing changes
    assert await a.backend.group_add("g3", c1, max_groups=2) is False
    assert await b.backend.group_add("g3", c2, max_groups=2) is False
    assert await a.backend.count_groups() == 2
    assert await a.backend.group_members("g3") == set()
    assert await a.backend.group_size("g3") == 0
    # existing groups can still be joined at the limit
    assert await a.backend.group_add("g2", c1, max_groups=2) is True
    assert await b.backend.group_add("g1", c2, max_groups=2) is True
    assert await a.backend.group_members("g1") == {c1, c2}
    assert await a.backend.count_groups() == 2
    # an emptied group frees its place
    await a.backend.group_discard("g2", c1)
    await b.backend.group_discard("g2", c2)
    assert await a.backend.count_groups() == 1
    assert await a.backend.group_add("g3", c1, max_groups=2) is True
    assert await b.backend.count_groups() == 2


async def test_concurrent_group_adds_respect_max_groups(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    nodes = [a, b] * 20
    results = await asyncio.gather(
        *(n.backend.group_add(f"g{i}", n.channel(), max_groups=7) for i, n in enumerate(nodes))
    )
    assert results.count(True) == 7
    assert await a.backend.count_groups() == 7


# --- users --------------------------------------------------------------------------------------
async def test_publish_to_user_returns_the_users_connection_count(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    topic = user_topic("alice")
    await a.backend.subscribe(topic)
    await a.backend.add_connection(a.channel(), "alice", max_per_user=BIG, max_total=BIG)
    await b.backend.add_connection(b.channel(), "alice", max_per_user=BIG, max_total=BIG)
    await b.backend.add_connection(b.channel(), "bob", max_per_user=BIG, max_total=BIG)
    to_alice = await b.backend.publish_to_user(topic, "alice", b"thi")
    assert (to_alice.connections, to_alice.reached) == (2, 1)  # only a listens on her topic
    to_carol = await a.backend.publish_to_user(user_topic("carol"), "carol", b"tnobody")
    assert (to_carol.connections, to_carol.reached) == (0, 0)
    await flush(b, topic, a)
    assert a.received == [(topic, b"thi")]
    assert b.received == []


async def test_publish_to_user_count_follows_removals(cluster: Cluster) -> None:
    a = await cluster.node()
    channel = a.channel()
    await a.backend.add_connection(channel, "alice", max_per_user=BIG, max_total=BIG)
    assert (await a.backend.publish_to_user(user_topic("alice"), "alice", b"tx")).connections == 1
    await a.backend.remove_connection(channel, "alice")
    assert (await a.backend.publish_to_user(user_topic("alice"), "alice", b"tx")).connections == 0


# --- lifecycle ----------------------------------------------------------------------------------
async def test_stop_releases_this_servers_state(cluster: Cluster) -> None:
    """BaseBackend.stop: "Release this server's state and connections" — seen from another server."""
    a, b = await cluster.node(), await cluster.node()
    mine, theirs = a.channel(), b.channel()
    await a.backend.add_connection(mine, "alice", max_per_user=BIG, max_total=BIG)
    await b.backend.add_connection(theirs, "bob", max_per_user=BIG, max_total=BIG)
    await a.backend.subscribe(ROOM)
    await a.backend.group_add("room", mine, max_groups=BIG)
    await a.backend.group_add("solo", mine, max_groups=BIG)
    await b.backend.group_add("room", theirs, max_groups=BIG)

    await a.stop()

    assert await b.backend.count_connections() == 1
    assert await b.backend.count_user_connections("alice") == 0
    assert await b.backend.count_user_connections("bob") == 1
    assert await b.backend.group_members("room") == {theirs}
    assert await b.backend.group_size("solo") == 0
    assert await b.backend.count_groups() == 1

    async def reaches_no_server() -> bool:
        return (await b.backend.publish(ROOM, b"tafter-stop")).reached == 0

    # a let go of its subscription (on Redis, once the broker has seen its connection close).
    await eventually(reaches_no_server, what="a's subscription to end")
    assert a.received == []


async def test_backend_can_be_started_again_after_stop(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    await a.backend.subscribe(ROOM)
    await a.stop()
    await a.start()
    await b.backend.publish(ROOM, b"tlost")  # subscriptions do not survive stop()
    await a.backend.subscribe(ROOM)
    await b.backend.publish(ROOM, b"tagain")
    await flush(b, ROOM, a)
    assert a.payloads(ROOM) == [b"tagain"]  # tlost, had it come, would have come first


# --- names: any text a person types, kept apart from every other name --------------------------
# Pairs that one naive concatenation or another would merge: a separator inside a name, a name
# and its percent-escaped spelling, a name that looks like a key of another kind.
LOOKALIKE_GROUPS = ["a|b", "a", "a b", "a%20b", "group:x", "x", "Café", "Cafe\u0301", "*", "room|srv0-x!t"]
LOOKALIKE_USERS = ["Carol Smith", "Carol%20Smith", "a:b", "users:a:b", "b"]


async def test_lookalike_names_keep_their_own_members_counts_and_topics(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    members: dict[str, str] = {}
    for index, group in enumerate(LOOKALIKE_GROUPS):
        # Custom connection ids become the token of the channel name, separators and all.
        node = (a, b)[index % 2]
        channel = new_channel_name(node.server_id, f"conn {index}|!:*")
        assert await node.backend.group_add(group, channel, max_groups=BIG)
        members[group] = channel
    for group, channel in members.items():
        assert await b.backend.group_members(group) == {channel}, group
        assert await a.backend.group_size(group) == 1, group
    assert await a.backend.count_groups() == len(LOOKALIKE_GROUPS)

    for index, user in enumerate(LOOKALIKE_USERS):
        for n in range(index + 1):
            channel = new_channel_name(a.server_id, f"{user} #{n}")
            assert await a.backend.add_connection(channel, user, max_per_user=BIG, max_total=BIG) is (
                Admission.ACCEPTED
            )
    for index, user in enumerate(LOOKALIKE_USERS):
        assert await b.backend.count_user_connections(user) == index + 1, user
        delivery = await b.backend.publish_to_user(user_topic(user), user, b"tx")
        assert delivery.connections == index + 1, user

    for group in ("a|b", "a", "a b", "a%20b"):
        await b.backend.subscribe(group_topic(group))
    await a.backend.publish(group_topic("a|b"), b"tbar")
    await a.backend.publish(group_topic("a%20b"), b"tescaped")
    for group in ("a|b", "a", "a b", "a%20b"):
        await flush(a, group_topic(group), b)
    assert b.payloads(group_topic("a|b")) == [b"tbar"]
    assert b.payloads(group_topic("a%20b")) == [b"tescaped"]
    assert b.payloads(group_topic("a")) == [] and b.payloads(group_topic("a b")) == []


async def test_a_stopped_servers_memberships_in_lookalike_groups_are_released(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    for group in LOOKALIKE_GROUPS:
        await a.backend.group_add(group, new_channel_name(a.server_id, "x|y"), max_groups=BIG)
    theirs = b.channel()
    await b.backend.group_add("a", theirs, max_groups=BIG)
    await a.backend.add_connection(a.channel(), "Carol Smith", max_per_user=BIG, max_total=BIG)
    await b.backend.add_connection(b.channel(), "Carol%20Smith", max_per_user=BIG, max_total=BIG)

    await a.stop()

    assert await b.backend.group_members("a") == {theirs}
    for group in LOOKALIKE_GROUPS:
        if group != "a":
            assert await b.backend.group_members(group) == set(), group
            assert await b.backend.group_size(group) == 0, group
    assert await b.backend.count_groups() == 1
    assert await b.backend.count_user_connections("Carol Smith") == 0
    assert await b.backend.count_user_connections("Carol%20Smith") == 1


# --- memory specifics ---------------------------------------------------------------------------
async def test_memory_backends_sharing_a_hub_see_each_other() -> None:
    hub = MemoryHub()
    a, b = MemoryBackend(hub), MemoryBackend(hub)
    got_a: list[tuple[str, bytes]] = []
    got_b: list[tuple[str, bytes]] = []
    await a.start("srv-a", lambda t, p: got_a.append((t, p)))
    await b.start("srv-b", lambda t, p: got_b.append((t, p)))
    try:
        await a.subscribe(ROOM)
        await b.subscribe(ROOM)
        await a.publish(ROOM, b"tfrom-a")
        await b.publish(ROOM, b"tfrom-b")
        assert got_a == got_b == [(ROOM, b"tfrom-a"), (ROOM, b"tfrom-b")]

        await a.add_connection("srv-a!1", "alice", max_per_user=BIG, max_total=BIG)
        await b.group_add("room", "srv-b!1", max_groups=BIG)
        assert await b.count_connections() == 1
        assert await b.count_user_connections("alice") == 1
        assert await a.group_members("room") == {"srv-b!1"}
        assert await a.count_groups() == 1
        assert a.hub is b.hub is hub
    finally:
        await a.stop()
        await b.stop()


async def test_memory_backends_without_a_shared_hub_are_isolated() -> None:
    a, b = MemoryBackend(), MemoryBackend()
    got_b: list[tuple[str, bytes]] = []
    await a.start("srv-a", lambda t, p: None)
    await b.start("srv-b", lambda t, p: got_b.append((t, p)))
    try:
        await b.subscribe(ROOM)
        await a.publish(ROOM, b"tx")
        await a.add_connection("srv-a!1", "alice", max_per_user=BIG, max_total=BIG)
        await a.group_add("room", "srv-a!1", max_groups=BIG)
        assert got_b == []
        assert await b.count_connections() == 0
        assert await b.count_groups() == 0
    finally:
        await a.stop()
        await b.stop()


async def test_memory_publish_is_synchronous() -> None:
    backend = MemoryBackend()
    got: list[bytes] = []
    await backend.start("srv", lambda t, p: got.append(p))
    await backend.subscribe(ROOM)
    await backend.publish(ROOM, b"tnow")
    assert got == [b"tnow"]  # delivered before publish returned
    await backend.stop()


async def test_memory_subscribe_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        await MemoryBackend().subscribe(ROOM)


async def test_memory_failing_subscriber_does_not_stop_fan_out(caplog: pytest.LogCaptureFixture) -> None:
    hub = MemoryHub()
    bad, good = MemoryBackend(hub), MemoryBackend(hub)
    got: list[bytes] = []

    def explode(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    await bad.start("srv-bad", explode)
    await good.start("srv-good", lambda t, p: got.append(p))
    await bad.subscribe(ROOM)
    await good.subscribe(ROOM)
    with caplog.at_level(logging.ERROR, logger="fastapi_channels.backends.memory"):
        await good.publish(ROOM, b"tx")
    assert got == [b"tx"]
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    await bad.stop()
    await good.stop()


def test_event_listeners_are_isolated_from_each_other(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    seen: list[tuple[str, BaseException | None]] = []

    def broken(event: str, error: BaseException | None) -> None:
        raise ValueError("listener bug")

    backend.add_event_listener(broken)
    backend.add_event_listener(lambda e, err: seen.append((e, err)))
    error = OSError("down")
    with caplog.at_level(logging.ERROR):
        backend._emit("lost", error)
        backend._emit("recovered", None)
    assert seen == [("lost", error), ("recovered", None)]
