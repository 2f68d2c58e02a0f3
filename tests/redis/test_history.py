"""History groups over real server processes on a real redis-server, with real clients.

The issue's tests: (1) a client that left gets exactly what it missed, then live traffic,
on one server, across two and through a remote join; (2) replays racing live traffic,
thousands of messages, every member's offsets contiguous; (3) `CLIENT KILL TYPE pubsub` and
a Redis restart that kept its data, during steady publishing: every member's offsets stay
contiguous; (4) Redis restarted empty: a new epoch, no wrong replay, the app told;
(5) retention by size and TTL; (6) a slow consumer under drop_oldest sees a gap and
recovers it by re-joining with its position. Plus a measurement of a 10,000-message replay.

The scenarios shared with the memory backend live in tests/kit/test_history_memory.py.
Deadlines only bound waits; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.kit.test_history_memory import (
    WAIT,
    Peer,
    assert_contiguous,
    now,
    open_slow_peer,
    publish,
    scenario_history_pages,
    scenario_idle_group_expires,
    scenario_missed_messages_are_replayed_then_live,
    scenario_replay_races_live_traffic,
    scenario_retention_by_size,
    scenario_what_a_history_group_refuses,
)
from tests.redis.conftest import ClusterFactory
from tests.support.redis_server import RedisProcess
from tests.support.server_process import ServerProcess

HISTORY = {"WS_HISTORY_GROUPS": "room.*"}


@pytest.fixture(autouse=True)
async def close_peers() -> AsyncIterator[None]:
    yield
    await Peer.close_all()


async def get_json(server: ServerProcess, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}{path}", timeout=WAIT)
        response.raise_for_status()
        return response.json()


async def stats(server: ServerProcess) -> dict[str, Any]:
    return await get_json(server, "/stats")  # type: ignore[no-any-return]


def cpu_seconds(server: ServerProcess) -> float:
    """utime + stime of the server process (Linux /proc), in seconds."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def redis_admin(server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    admin = aioredis.Redis.from_url(server.url)
    try:
        yield admin
    finally:
        await admin.aclose()


async def kill_pubsub_connections(server: RedisProcess) -> int:
    async with redis_admin(server) as admin:
        return int(await admin.client_kill_filter(_type="pubsub"))


class PersistentRedis(RedisProcess):
    """A redis-server that can be restarted with its data: SHUTDOWN SAVE writes dump.rdb in its
    directory, and the next start loads it (`--save ""` only turns automatic saves off)."""

    def restart_keeping_data(self, down_for: float = 0.5) -> None:
        assert self.process is not None
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(self.url).shutdown(save=True)
        self.process.wait(10)
        self.process = None
        time.sleep(down_for)
        self.start()


@pytest.fixture
def persistent_redis() -> Iterator[PersistentRedis]:
    server = PersistentRedis()
    server.start()
    yield server
    server.stop()


# --- 1. a client that left gets exactly what it missed, then live -------------------------------


@pytest.mark.parametrize("layout", ["one_server", "two_servers", "two_servers_remote_join"])
async def test_a_client_that_left_gets_exactly_what_it_missed_then_live(
    cluster: ClusterFactory, layout: str
) -> None:
    servers = cluster(1 if layout == "one_server" else 2, **HISTORY)
    publisher = await Peer.open(servers[0].ws_url, "publisher")
    member = await Peer.open(servers[-1].ws_url, "member")
    controller = publisher if layout == "two_servers_remote_join" else None
    await scenario_missed_messages_are_replayed_then_live(publisher, member, controller)


async def test_history_pages_on_redis(cluster: ClusterFactory) -> None:
    (server,) = cluster(1, WS_HISTORY_SIZE=20, **HISTORY)
    await scenario_history_pages(await Peer.open(server.ws_url, "reader"))


async def test_what_a_history_group_refuses_on_redis(cluster: ClusterFactory) -> None:
    (server,) = cluster(1, **HISTORY)
    await scenario_what_a_history_group_refuses(await Peer.open(server.ws_url, "sender"))


# --- 2. replays racing live traffic ---------------------------------------------------------------


async def test_replays_racing_live_traffic_on_two_servers(
    cluster: ClusterFactory, record_property: Callable[[str, object], None]
) -> None:
    """5,000 messages sent as fast as the server answers (64 in flight), while four clients
    (two on each server, two of them joined by a controller on the other server) keep leaving
    and re-joining with their last position: every client has exactly 1..5000, in order."""
    s0, s1 = cluster(2, **HISTORY)
    publisher = await Peer.open(s0.ws_url, "publisher")
    controller = await Peer.open(s1.ws_url, "controller")
    steady = [await Peer.open(s0.ws_url, "steady0"), await Peer.open(s1.ws_url, "steady1")]
    rejoiners = [
        (await Peer.open(s0.ws_url, "own0"), None),
        (await Peer.open(s1.ws_url, "own1"), None),
        (await Peer.open(s1.ws_url, "remote1"), publisher),  # owned by s1, joined from s0
        (await Peer.open(s0.ws_url, "remote0"), controller),  # owned by s0, joined from s1
    ]
    figures = await scenario_replay_races_live_traffic(publisher, steady, rejoiners, 5000, seed=7)
    figures["replayed_s0"] = (await stats(s0))["history_replayed"]
    figures["replayed_s1"] = (await stats(s1))["history_replayed"]
    record_property("race", figures)
    assert figures["replayed"] > 0  # not vacuous: replays happened while messages flowed


# --- 3. faults during steady publishing -------------------------------------------------------------


class SteadyPublisher:
    """Sends numbered messages to a group with "ack", `window` unanswered at a time, until
    stopped; tolerates errors (a send during an outage is refused) and counts them."""

    def __init__(self, peer: Peer, group: str, window: int = 16) -> None:
        self.peer = peer
        self.group = group
        self.window = window
        self.sent = 0
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def answered(self) -> int:
        return self.peer.counts["sent"] + self.peer.counts["error"]

    async def _run(self) -> None:
        while not self.stop.is_set():
            if self.sent - self.answered >= self.window:
                await self.peer.wait_for(lambda: self.sent - self.answered < self.window, WAIT, "acks")
                continue
            await self.peer.send(op="group", group=self.group, data=self.sent, ack=self.sent)
            self.sent += 1
            if self.peer.counts["error"]:
                await asyncio.sleep(0.002)  # do not spin while Redis is down

    async def until_acked(self, count: int, timeout: float = WAIT) -> None:
        await self.peer.wait_for(lambda: self.peer.counts["sent"] >= count, timeout, f"{count} acks")

    async def finish(self) -> None:
        self.stop.set()
        await self.task
        await self.peer.wait_for(lambda: self.answered >= self.sent, WAIT, "every answer")


async def members_on(servers: list[ServerProcess], per_server: int, group: str) -> list[Peer]:
    members = []
    for index, server in enumerate(servers):
        for number in range(per_server):
            peer = await Peer.open(server.ws_url, f"member{index}.{number}")
            await peer.join(group)
            members.append(peer)
    return members


async def check_members(members: list[Peer], group_offset: int, epoch: str) -> None:
    for member in members:
        await member.until_offset(group_offset, timeout=WAIT, epoch=epoch)
    await asyncio.sleep(0.2)  # nothing more (no duplicate) is on its way
    for member in members:
        assert_contiguous(member.offsets(), 1, group_offset, member.name)
        assert {f["epoch"] for f in member.positioned()} == {epoch}


async def test_members_keep_every_message_through_killed_pubsub_connections(
    cluster: ClusterFactory, own_redis: RedisProcess, record_property: Callable[[str, object], None]
) -> None:
    """`CLIENT KILL TYPE pubsub` three times while a publisher on s0 sends to a group with two
    members on each server: every member gets 1..N exactly once, in order (what a server
    missed while it resubscribed is read from the stream)."""
    servers = cluster(2, redis=own_redis, **HISTORY)
    members = await members_on(servers, 2, "room.kill")
    publisher = SteadyPublisher(await Peer.open(servers[0].ws_url, "publisher"), "room.kill")
    for kill in range(1, 4):
        await publisher.until_acked(800 * kill)
        assert await kill_pubsub_connections(own_redis) == 2
    await publisher.until_acked(3200)
    await publisher.finish()
    page = await members[0].history("room.kill", limit=0)
    assert publisher.peer.counts["error"] == 0  # no send failed: Redis stayed up
    assert page["offset"] == publisher.sent
    await check_members(members, page["offset"], page["epoch"])
    figures = {}
    for index, server in enumerate(servers):
        got = await stats(server)
        assert got["backend_outages"] >= 3
        figures[f"s{index}"] = {k: got[k] for k in ("history_filled", "history_gaps", "backend_outages")}
    record_property("pubsub_kills", figures)


async def test_members_keep_every_message_through_a_redis_restart_that_kept_its_data(
    cluster: ClusterFactory,
    persistent_redis: PersistentRedis,
    record_property: Callable[[str, object], None],
) -> None:
    """Redis shut down (SHUTDOWN SAVE) and started again from its dump while a publisher on s0
    sends: sends during the outage are refused, the others are stored; the epoch stays, and
    every member on both servers gets every stored message once, in order."""
    servers = cluster(2, redis=persistent_redis, **HISTORY)
    members = await members_on(servers, 2, "room.restart")
    publisher = SteadyPublisher(await Peer.open(servers[0].ws_url, "publisher"), "room.restart")
    await publisher.until_acked(500)
    await asyncio.to_thread(persistent_redis.restart_keeping_data)
    acked = publisher.peer.counts["sent"]
    await publisher.until_acked(acked + 1000, timeout=15)  # sends are stored again
    await publisher.finish()
    page = await members[0].history("room.restart", limit=0)
    epochs = {f["epoch"] for f in members[0].positioned()}
    assert epochs == {page["epoch"]}, "the epoch changed although Redis kept the history"
    await check_members(members, page["offset"], page["epoch"])
    figures = {"sends": publisher.sent, "refused": publisher.peer.counts["error"], "stored": page["offset"]}
    for index, server in enumerate(servers):
        got = await stats(server)
        figures[f"s{index}"] = {k: got[k] for k in ("history_filled", "history_gaps", "backend_outages")}
    record_property("restart_with_data", figures)


# --- 4. Redis restarted empty -------------------------------------------------------------------------


async def send_until_acked(peer: Peer, group: str, data: Any, timeout: float = 15) -> None:
    """One send, retried while Redis (or the cluster state) is not back."""
    deadline = now() + timeout
    while True:
        answer = await peer.command("sent", op="group", group=group, data=data, ack=data)
        if answer["type"] == "sent":
            return
        assert now() < deadline, f"no send acknowledged within {timeout}s: {answer}"
        await asyncio.sleep(0.05)


async def test_after_redis_restarts_empty_an_old_position_is_not_recovered(
    cluster: ClusterFactory, own_redis: RedisProcess, record_property: Callable[[str, object], None]
) -> None:
    s0, s1 = cluster(2, redis=own_redis, REDIS_REGISTRY_EXPIRY=3, **HISTORY)
    near = await Peer.open(s0.ws_url, "near")
    far = await Peer.open(s1.ws_url, "far")
    publisher = await Peer.open(s0.ws_url, "publisher")
    for peer in (near, far):
        await peer.join("room.lost")
    await publish(publisher, "room.lost", 5)
    for peer in (near, far):
        await peer.until_offset(5)
    old = far.position()
    assert old is not None and old[1] == 5
    assert await get_json(s0, "/history_lost") == [] and await get_json(s1, "/history_lost") == []

    await asyncio.to_thread(own_redis.restart)  # SIGKILL, then an empty Redis on the same port
    for data in range(100, 104):
        await send_until_acked(publisher, "room.lost", data)
    page = await publisher.history("room.lost", since=old)  # another epoch: all that is retained
    new = page["epoch"]
    assert new is not None and new != old[0]
    assert page["offset"] == 4
    assert [m["data"] for m in page["messages"]] == [100, 101, 102, 103]
    assert [m["offset"] for m in page["messages"]] == [1, 2, 3, 4]
    sent = await until_both_hear_the_new_epoch(publisher, [near, far], new, sent=4)

    # A client that was away comes back with its old position: never a wrong replay.
    await far.leave("room.lost")
    mark = len(far.positioned())
    joined = await far.join("room.lost", since=old)
    assert joined == {"recovered": False, "replayed": 0, "epoch": new, "offset": sent}
    await far.sync()
    assert far.positioned()[mark:] == []
    # Remote too: joined by a connection of the other server.
    await far.leave("room.lost")
    joined = await publisher.join("room.lost", since=old, channel=far.channel_name)
    assert joined == {"recovered": False, "replayed": 0, "epoch": new, "offset": sent}

    # Each server with members was told, so its app can make its clients resync.
    lost0 = await eventually_json(s0, "/history_lost", lambda v: "room.lost" in v)
    lost1 = await eventually_json(s1, "/history_lost", lambda v: "room.lost" in v)
    record_property("history_lost_calls", {"s0": len(lost0), "s1": len(lost1)})


async def test_after_redis_restarts_empty_members_get_every_message_of_the_new_epoch(
    cluster: ClusterFactory, own_redis: RedisProcess, record_property: Callable[[str, object], None]
) -> None:
    """Members stay connected through Redis restarting empty. Their old position is lost, but
    every message sent after the restart is stored in the new epoch, and each server reads
    what its pub/sub connection missed while it was reconnecting: every member gets the new
    epoch's 1, 2, 3, 4. (The first send after the restart usually lands before the servers
    have resubscribed: then it depends on that read. The deterministic twin is
    tests/kit/test_history_memory.py::test_a_new_epoch_found_while_filling_starts_from_its_first_message.)"""
    s0, s1 = cluster(2, redis=own_redis, REDIS_REGISTRY_EXPIRY=3, **HISTORY)
    near = await Peer.open(s0.ws_url, "near")
    far = await Peer.open(s1.ws_url, "far")
    publisher = await Peer.open(s0.ws_url, "publisher")
    for peer in (near, far):
        await peer.join("room.lost")
    await publish(publisher, "room.lost", 5)
    for peer in (near, far):
        await peer.until_offset(5)
    await asyncio.to_thread(own_redis.restart)
    for data in range(100, 104):
        await send_until_acked(publisher, "room.lost", data)
    new = (await publisher.history("room.lost", limit=0))["epoch"]
    sent = await until_both_hear_the_new_epoch(publisher, [near, far], new, sent=4)
    for peer in (near, far):
        await peer.until_offset(sent, epoch=new)
    await asyncio.sleep(0.2)
    got = {"near": near.offsets(new), "far": far.offsets(new)}
    record_property("new_epoch_offsets", got)
    assert got == {"near": list(range(1, sent + 1)), "far": list(range(1, sent + 1))}


async def until_both_hear_the_new_epoch(publisher: Peer, members: list[Peer], epoch: str, sent: int) -> int:
    """Send more messages (one every 50 ms) until every member got one of `epoch` live: then
    every server has resubscribed and seen the new epoch. Returns the group's offset."""
    deadline = now() + WAIT
    while not all(member.top.get(epoch) for member in members):
        assert now() < deadline, {m.name: m.offsets(epoch) for m in members}
        await send_until_acked(publisher, "room.lost", 100 + sent)
        sent += 1
        await asyncio.sleep(0.05)
    return sent


async def eventually_json(server: ServerProcess, path: str, condition: Callable[[Any], bool]) -> Any:
    deadline = now() + WAIT
    while True:
        value = await get_json(server, path)
        if condition(value):
            return value
        assert now() < deadline, f"{path} of {server.http_url}: {value}"
        await asyncio.sleep(0.05)


# --- 5. retention --------------------------------------------------------------------------------------


async def test_retention_by_size_on_redis(cluster: ClusterFactory) -> None:
    s0, s1 = cluster(2, WS_HISTORY_SIZE=10, **HISTORY)
    publisher = await Peer.open(s0.ws_url, "publisher")
    await scenario_retention_by_size(publisher, await Peer.open(s1.ws_url, "member"), 10)


async def test_an_idle_group_expires_on_redis(cluster: ClusterFactory) -> None:
    s0, s1 = cluster(2, WS_HISTORY_TTL=1, **HISTORY)
    publisher = await Peer.open(s0.ws_url, "publisher")
    await scenario_idle_group_expires(publisher, await Peer.open(s1.ws_url, "member"), 1)


# --- 6. a slow consumer under drop_oldest ----------------------------------------------------------------


async def test_a_slow_consumer_recovers_what_drop_oldest_dropped(
    cluster: ClusterFactory, record_property: Callable[[str, object], None]
) -> None:
    """WS_SLOW_CONSUMER_POLICY=drop_oldest, WS_OUTBOUND_QUEUE_MESSAGES=16. A member stops
    reading while 16 KB messages are sent until its server drops some (the kernel buffers hold
    a few MB first): it sees a gap in the offsets. Re-joining with its last position before
    the gap gets exactly what it missed, then live messages."""
    s0, s1 = cluster(
        2,
        WS_SLOW_CONSUMER_POLICY="drop_oldest",
        WS_OUTBOUND_QUEUE_MESSAGES=16,
        WS_HISTORY_SIZE=5000,
        **HISTORY,
    )
    publisher = await Peer.open(s0.ws_url, "publisher")
    slow = await open_slow_peer(s1.ws_url, s1.port, "slow")
    await slow.join("room.slow")
    slow.pause()
    sent = 0
    while (await stats(s1))["messages_dropped"] == 0:
        assert sent < 2000, "nothing dropped after 32 MB: the member is not slow"
        await publish(publisher, "room.slow", 100, start=sent, window=64, padding="x" * 16384)
        sent += 100
    await publish(publisher, "room.slow", 100, start=sent, window=64, padding="x" * 16384)
    sent += 100
    slow.resume()
    await slow.until_offset(sent, timeout=WAIT)
    offsets = slow.offsets()
    assert offsets[-1] == sent
    assert sorted(set(offsets)) == offsets, "out of order or twice"
    contiguous = next((i for i, o in enumerate(offsets) if o != i + 1), len(offsets))
    assert contiguous < sent, "no gap: the test did not make the member slow"
    epoch, position = slow.positioned()[contiguous - 1]["epoch"], contiguous
    record_property("drop_oldest", {"sent": sent, "received": len(offsets), "gap_after": position})

    await slow.leave("room.slow")
    mark = len(slow.positioned())
    joined = await slow.command("joined", op="join", group="room.slow", since=[epoch, position])
    assert joined["type"] == "joined", joined
    missed = sent - position
    assert joined["result"] == {"recovered": True, "replayed": missed, "epoch": epoch, "offset": sent}
    await publish(publisher, "room.slow", 5, start=sent)
    await slow.until_offset(sent + 5)
    await slow.sync()
    assert_contiguous(slow.offsets()[mark:], position + 1, sent + 5, "the slow member after its re-join")


# --- replays bigger than the outbound buffer, and one of 10,000 measured -------------------------------


async def test_a_replay_larger_than_the_outbound_buffer_is_delivered_on_redis(
    cluster: ClusterFactory,
) -> None:
    """Default outbound buffer (1024 frames), WS_HISTORY_SIZE=3000, 2,000 missed messages,
    a remote re-join: the client reads at full speed and must get all of them (see the memory
    twin in tests/kit/test_history_memory.py for the diagnosis)."""
    s0, s1 = cluster(2, WS_HISTORY_SIZE=3000, **HISTORY)
    publisher = await Peer.open(s0.ws_url, "publisher")
    member = await Peer.open(s1.ws_url, "member")
    await member.join("room.big")
    await publish(publisher, "room.big", 1)
    await member.until_offset(1)
    await member.leave("room.big")
    await publish(publisher, "room.big", 2000, start=1, window=128)
    joined = await publisher.join("room.big", since=member.position(), channel=member.channel_name)
    assert joined["recovered"] and joined["replayed"] == 2000
    await member.until_offset(2001)
    assert_contiguous(member.offsets(), 1, 2001, "member")
    assert (await stats(s1))["slow_consumer_closes"] == 0


async def test_replay_of_10000_missed_messages_on_redis(
    cluster: ClusterFactory, record_property: Callable[[str, object], None]
) -> None:
    """A measurement: 10,000 missed messages (~150 B each) replayed to a client of s1 by a
    remote re-join from s0, with an outbound buffer that takes the whole replay. Records the
    time from the join command to its reply and to the last frame, and s1's CPU time."""
    s0, s1 = cluster(
        2,
        WS_HISTORY_SIZE=10_000,
        WS_OUTBOUND_QUEUE_MESSAGES=30_000,
        WS_OUTBOUND_QUEUE_BYTES=64 * 2**20,
        **HISTORY,
    )
    publisher = await Peer.open(s0.ws_url, "publisher")
    member = await Peer.open(s1.ws_url, "member")
    await member.join("room.big")
    await publish(publisher, "room.big", 1)
    await member.until_offset(1)
    await member.leave("room.big")
    await publish(publisher, "room.big", 10_000, start=1, window=256, padding="x" * 100)
    await asyncio.sleep(0.3)  # let s1 go idle
    cpu_before = cpu_seconds(s1)
    started = time.perf_counter()
    joined = await publisher.join("room.big", since=member.position(), channel=member.channel_name)
    replied = time.perf_counter()
    await member.until_offset(10_001, timeout=30)
    done = time.perf_counter()
    cpu = cpu_seconds(s1) - cpu_before
    assert joined == {"recovered": True, "replayed": 10_000, "epoch": joined["epoch"], "offset": 10_001}
    assert_contiguous(member.offsets(), 1, 10_001, "member")
    record_property("replay_10000_reply_s", round(replied - started, 3))
    record_property("replay_10000_last_frame_s", round(done - started, 3))
    record_property("replay_10000_owner_cpu_s", round(cpu, 3))
