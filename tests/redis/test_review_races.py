"""Adversarial review of the delivery contract: races and faults that break a promise.

Each test forces one interleaving with a fault Redis or the OS can produce on demand
(`CONFIG SET min-replicas-to-write 1`: every write refused, reads and PUBLISH still served,
no data lost; `CLIENT PAUSE`; `CLIENT KILL TYPE pubsub`; SIGSTOP/SIGCONT of a server; a Redis
SIGKILL and restart), or, where no Redis primitive can fail exactly one call, with a one-shot
fault injected at the library's own I/O boundary (said so in the test). Servers are uvicorn
processes of `tests/app.py` (fixtures of tests/redis/conftest.py) or managers of that app in
this process, on a redis-server of the test's own. Deadlines only bound waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from websockets.exceptions import ConnectionClosed

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.backends.redis_reader import ReaderState
from fastapi_channels.backends.redis_state import load_script
from fastapi_channels.exceptions import AuthorizationError, BackendError, BaseError, DeliveryError
from fastapi_channels.testing import Communicator, app_lifespan
from tests.app import create_app
from tests.redis.conftest import ClusterFactory
from tests.redis.test_delivery_contract import (
    AckedSender,
    Inbox,
    cluster_view,
    kill_pubsub_connections,
    now,
    redis_admin,
    refusal,
    server_stats,
    stop_inboxes,  # noqa: F401  (the autouse fixture that stops the Inbox readers)
)
from tests.support.client import Client
from tests.support.redis_server import RedisProcess
from tests.support.server_process import ServerProcess

# --- helpers -------------------------------------------------------------------------------------


def in_process(
    redis: RedisProcess,
    prefix: str,
    server_id: str,
    *,
    authorize_join: Callable[[Any, str], Any] | None = None,
    **settings: Any,
) -> tuple[Any, ConnectionManager]:
    """The test app and its manager, in this process, as one more server of the cluster."""
    config = WSConfig(
        BACKEND_TYPE="redis",
        REDIS_URL=redis.url,
        REDIS_CHANNEL_PREFIX=prefix,
        SERVER_INSTANCE_ID=server_id,
        LOG_STATS=False,
        **settings,
    )
    options = {} if authorize_join is None else {"authorize_join": authorize_join}
    return create_app(config, **options)


@contextlib.asynccontextmanager
async def client_of(app: Any, user: str) -> AsyncIterator[tuple[Communicator, str]]:
    """An in-process client of `app` as `user`, and its channel name."""
    ws = Communicator(app, f"/ws/{user}")
    accepted, code = await ws.connect()
    assert accepted, f"refused: {code} {ws.close_reason!r}"
    try:
        hello = await ws.receive_json_from(5)
        assert hello["type"] == "hello", hello
        yield ws, hello["channel_name"]
    finally:
        with contextlib.suppress(Exception):
            await ws.disconnect(timeout=5)


async def eventually(probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Call the async `probe` until it returns something truthy or `timeout` passes; its last answer."""
    deadline = now() + timeout
    while True:
        answer = await probe()
        if answer or now() > deadline:
            return answer
        await asyncio.sleep(interval)


async def writes_refused(admin: aioredis.Redis, refused: bool) -> None:
    """Redis refuses every write (NOREPLICAS) while keeping its data, reads and PUBLISH."""
    await admin.config_set("min-replicas-to-write", 1 if refused else 0)


def pause_process(server: ServerProcess) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume_process(server: ServerProcess) -> None:
    assert server.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)


async def numsub(admin: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await admin.pubsub_numsub(channel)
    return int(count)


# --- 1. a release that failed once is never retried ----------------------------------------------


async def test_a_close_during_a_redis_write_failure_does_not_hold_the_users_slot_forever(
    cluster: ClusterFactory, own_redis: RedisProcess
) -> None:
    """MAX_CONNECTIONS_PER_CLIENT=1. u (server 1, member of g) closes while Redis refuses writes
    for a moment. Once Redis takes writes again, the cluster must let u connect again and count
    g at its one remaining member. `_release` drops the mirror entry first and swallows the
    error, so nothing ever retries: u is refused with 1013 CONNECTION_LIMIT_EXCEEDED for as long
    as server 1 lives, g is counted with a member that is gone, and server 1 stays subscribed
    to g and user:u."""
    s1, s2 = cluster(2, redis=own_redis, REDIS_REGISTRY_EXPIRY=3, MAX_CONNECTIONS_PER_CLIENT=1)
    u = await Client.open(s1.ws_url, "u")
    await u.call("joined", op="join", group="g")
    other = await Client.open(s2.ws_url, "o")
    await other.call("joined", op="join", group="g")

    async with redis_admin(own_redis) as admin:
        await writes_refused(admin, True)
        try:
            await u.close()

            async def unregistered() -> bool:
                return (await server_stats(s1))["connections"] == 0

            assert await eventually(unregistered, 10), "server 1 never unregistered u"
        finally:
            await writes_refused(admin, False)

    async def reconnected() -> Client | None:
        try:
            return await Client.open(s2.ws_url, "u")
        except ConnectionClosed as closed:
            reconnected.last = refusal(closed)  # type: ignore[attr-defined]
            return None

    reconnected.last = None  # type: ignore[attr-defined]
    # Several keeper ticks (1 s each with REDIS_REGISTRY_EXPIRY=3) after Redis recovered.
    again = await eventually(reconnected, 6, interval=0.5)
    view = await cluster_view(s2, user="u", group="g")
    subscribed = (await server_stats(s1))["subscriptions"]
    assert again is not None, (
        f"u, whose only connection closed, is still refused {reconnected.last}: the cluster counts "  # type: ignore[attr-defined]
        f"{view['user_connections']} connection(s) for u and {view['group_size']} member(s) in g "
        f"(1 left); server 1, with no connection, listens to {subscribed} topics"
    )


async def test_a_leave_that_failed_can_be_retried(cluster: ClusterFactory, own_redis: RedisProcess) -> None:
    """u leaves g while Redis refuses writes: the leave fails (BackendError), as it should. But
    the registry already dropped the membership, so the retry after recovery returns `left` at
    once without touching Redis: g stays counted with u in it for as long as g lives (and server
    1 stays subscribed to a group it has no member of)."""
    s1, s2 = cluster(2, redis=own_redis, REDIS_REGISTRY_EXPIRY=3)
    u = await Client.open(s1.ws_url, "u")
    await u.call("joined", op="join", group="g")
    other = await Client.open(s2.ws_url, "o")
    await other.call("joined", op="join", group="g")

    async with redis_admin(own_redis) as admin:
        await writes_refused(admin, True)
        try:
            await u.send(op="leave", group="g")
            first = await u.next(timeout=15)
        finally:
            await writes_refused(admin, False)
    assert first["type"] == "error" and first["retryable"], first

    await u.call("left", op="leave", group="g")  # the retry the error invited

    async def counted_right() -> bool:
        view = await cluster_view(s2, group="g")
        return view["group_size"] == 1 and view["group_members"] == [other.channel_name]

    assert await eventually(counted_right, 5), (
        f"after a retried leave the cluster still has u in g: {await cluster_view(s2, group='g')}"
    )


# --- 2. a write-back that failed once is never retried --------------------------------------------


async def test_a_write_back_that_failed_is_retried(own_redis: RedisProcess, redis_prefix: str) -> None:
    """Redis restarts empty; this server's first write-back of its state fails once (injected at
    `ClusterState.rewrite`, as a connection reset during it would: no Redis primitive fails the
    write-back but not the heartbeat just before it). The warning says "the keeper retries", but
    the heartbeat that preceded it already recreated the liveness key and learnt the new epoch,
    so no later heartbeat asks for a write-back: the server's connection and membership are
    never counted again (group_size 0, connections 0) while it serves them."""
    app, manager = in_process(own_redis, redis_prefix, "review-a", REDIS_REGISTRY_EXPIRY=3)
    async with app_lifespan(app), client_of(app, "x") as (ws, _name):
        await ws.send_json_to({"op": "join", "group": "g"})
        assert (await ws.receive_json_from(5))["type"] == "joined"
        state = manager.backend.state  # type: ignore[attr-defined]
        original = state.rewrite
        attempts: list[str] = []

        async def rewrite_failing_once() -> Any:
            attempts.append("rewrite")
            if len(attempts) == 1:
                raise redis.exceptions.ConnectionError("injected: connection reset during the write-back")
            return await original()

        state.rewrite = rewrite_failing_once
        await asyncio.to_thread(own_redis.kill)
        await asyncio.to_thread(own_redis.start)

        async def tried() -> bool:
            return bool(attempts)

        assert await eventually(tried, 10), "no write-back was attempted after Redis restarted empty"

        async def counted() -> tuple[int, int] | None:
            with contextlib.suppress(BaseError):
                counts = (await manager.count_connections(), await manager.group_size("g"))
                return counts if counts == (1, 1) else None
            return None

        # Keeper ticks are 1 s here: a retry has 5 chances.
        assert await eventually(counted, 5) == (1, 1), (
            f"{len(attempts)} write-back attempt(s); the cluster counts "
            f"{await manager.count_connections()} connection(s) and g at "
            f"{await manager.group_size('g')} member(s) while this server serves 1 of each"
        )


# --- 3. a second join of the same group returns before the first is done ----------------------------


async def test_a_concurrent_second_join_does_not_return_before_the_first_is_subscribed(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """Two join_group(x, "g") at once (an app's own join and a remote one, say). The first
    registers g locally and waits for Redis to confirm the subscription; the second sees g in
    `connection.groups` and returns at once. README: "join_group returns once Redis confirmed
    the group's topic ... when Redis is unreachable it raises BackendError instead of
    returning". Here Redis is paused (CLIENT PAUSE) so the first join fails (subscription not
    confirmed in time): the second join returned normally for a membership that never existed."""
    app, manager = in_process(own_redis, redis_prefix, "review-a")
    async with app_lifespan(app), client_of(app, "x") as (_ws, name):
        connection = manager.get_connection(name)
        assert connection is not None
        reader = manager.backend.reader  # type: ignore[attr-defined]
        reader.confirm_timeout = 0.3  # shortens the test; the pause below is five times longer
        async with redis_admin(own_redis) as admin:
            await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # in effect once answered
            first = asyncio.create_task(manager.join_group(name, "g"))
            while "g" not in connection.groups and not first.done():
                await asyncio.sleep(0)
            try:
                await manager.join_group(name, "g")
                second_failed = False
            except BackendError:
                second_failed = True
            listening_when_second_returned = manager.backend.listening("group:g")
            try:
                await first
                first_failed = False
            except BackendError:
                first_failed = True
        # The second join shares the first one's outcome: it returns normally only once the
        # subscription was confirmed, and fails when the first failed.
        assert second_failed == first_failed
        if not second_failed:
            assert listening_when_second_returned
            size = await manager.group_size("g")
            assert "g" in connection.groups and size == 1, (
                f"joined, but local groups {sorted(connection.groups)}, cluster size {size}"
            )


# --- 4. reached and expected are counts: an uncounted subscriber hides a missing server ---------------


@pytest.mark.parametrize("idle_server", [False, True], ids=["two_servers", "plus_an_idle_server"])
async def test_a_broadcast_that_misses_a_server_with_members_is_a_shortfall(
    cluster: ClusterFactory, own_redis: RedisProcess, redis_prefix: str, idle_server: bool
) -> None:
    """Strict delivery. Server 1 (one member) is stopped (SIGSTOP) and its pub/sub connection
    killed, so a broadcast cannot reach it while it still counts as alive. With two servers the
    sender is told (DELIVERY_SHORTFALL). Add a third server with no connection: it listens to
    `broadcast` (every started server does) but is not counted (only servers with connections
    are), so PUBLISH's 2 equals the 2 expected and the broadcast is acknowledged: the member on
    server 1 never gets it and nobody is told. The same holds for group and user topics during
    any join or connect (subscribed first, counted a round trip later) and with any PSUBSCRIBE
    client on the same Redis."""
    servers = cluster(3 if idle_server else 2, redis=own_redis, WS_STRICT_DELIVERY="true")
    s0, s1 = servers[0], servers[1]
    sender = AckedSender(await Client.open(s0.ws_url, "sender"))
    member = Inbox(await Client.open(s1.ws_url, "member"))
    await sender.send(ack="warm", op="broadcast", data="warm")
    assert await member.wait(lambda: "warm" in member.data("broadcast"), 5)

    channel = f"{redis_prefix}broadcast"
    async with redis_admin(own_redis) as admin:
        pause_process(s1)
        try:
            await kill_pubsub_connections(own_redis)

            async def others_back() -> bool:
                return await numsub(admin, channel) == len(servers) - 1

            assert await eventually(others_back, 10, interval=0.02), "the running servers did not resubscribe"
            await sender.send(ack="lost", op="broadcast", data="lost")
            await sender.all_answered()
        finally:
            resume_process(s1)
    assert "lost" not in sender.acked, (
        "the broadcast missed server 1 (stopped, its member connected) and was acknowledged "
        f"as delivered: PUBLISH reached {len(servers) - 1} servers, and {len(servers) - 1} are "
        "counted as having connections"
    )
    assert sender.errors[-1]["error_code"] == "DELIVERY_SHORTFALL", sender.errors[-1]


# --- 5. a partial reap and a server that comes back: counts undercounted ------------------------------


async def test_a_server_back_from_a_partial_reap_counts_all_its_connections_and_members(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """A server's liveness key expired (a pause, a partition) and a survivor's reaper ran one
    batch of reap.lua before the server came back (batches are 500 entries, 20 per tick: a
    server with thousands of entries is reaped over several ticks). Reaping one connection of u
    deletes the server's whole `users:u` field, reaping one member of g its whole `gsrv:g` field;
    the write-back then adds 1 for each entry that was reaped and 0 for each that was not. Here,
    2 connections of u in g, one batch of 1: the cluster counts 1 connection for u and 1 member
    in g, so u can open a third connection under MAX_CONNECTIONS_PER_CLIENT=2."""
    app, manager = in_process(
        own_redis, redis_prefix, "review-a", REDIS_REGISTRY_EXPIRY=3, MAX_CONNECTIONS_PER_CLIENT=2
    )
    async with app_lifespan(app), client_of(app, "u") as (ws1, _n1), client_of(app, "u") as (ws2, _n2):
        for ws in (ws1, ws2):
            await ws.send_json_to({"op": "join", "group": "g"})
            assert (await ws.receive_json_from(5))["type"] == "joined"
        assert (await manager.count_user_connections("u"), await manager.group_size("g")) == (2, 2)
        keys = manager.backend.keys  # type: ignore[attr-defined]
        state = manager.backend.state  # type: ignore[attr-defined]
        rewrites = state.rewrites
        # Atomically: the liveness key expired, and a reaper ran one batch (of 1).
        expire_then_reap_one_batch = (
            "redis.call('DEL', KEYS[3])\nredis.call('ZADD', KEYS[1], 0, ARGV[3])\n" + load_script("reap")
        )
        async with redis_admin(own_redis) as admin:
            reaped = await admin.eval(
                expire_then_reap_one_batch,
                3,
                keys.servers,
                keys.groups,
                keys.alive,
                keys.prefix,
                1,
                keys.server_id,
            )
        assert reaped == 2, reaped  # one connection and one membership

        async def written_back() -> bool:
            return state.rewrites > rewrites

        assert await eventually(written_back, 10), "the server never wrote its state back"
        counts = (await manager.count_user_connections("u"), await manager.group_size("g"))
        assert counts == (2, 2), (
            f"after the write-back the cluster counts u at {counts[0]} connection(s) and g at "
            f"{counts[1]} member(s); this server holds 2 of each"
        )


# --- 6. the first script after a data loss, from a process that knew no epoch ------------------------


async def test_a_send_right_after_redis_lost_its_data_is_unverified_whoever_sends_it(
    cluster: ClusterFactory, own_redis: RedisProcess, redis_prefix: str
) -> None:
    """Server A (a member of g) is slow to notice (stopped); Redis restarts empty; a server
    that just started (it knew no epoch: a fresh process, like every new emitter) sends to g
    first. README: for RESYNC_WINDOW after a loss "sends are shortfalls with expected: None".
    But epoch() marks the new epoch lost only when its creator knew an older one: created by a
    fresh process it is trusted at once, so the send counts 0 servers with members, reaches 0
    and returns normally under strict delivery: the member on A never gets it, nobody is told.
    (Connects on the fresh server are admitted under limits that cannot see A's connections.)"""
    (a,) = cluster(1, redis=own_redis)
    member = await Client.open(a.ws_url, "member")
    await member.call("joined", op="join", group="g")

    pause_process(a)
    try:
        await asyncio.to_thread(own_redis.kill)
        await asyncio.to_thread(own_redis.start)
        # A fresh process sends at once (an emitter: a server that starts now waits out the
        # resync window before it takes clients, see RedisBackend._until_trusted).
        from fastapi_channels import Emitter

        config = WSConfig(
            BACKEND_TYPE="redis",
            REDIS_URL=own_redis.url,
            REDIS_CHANNEL_PREFIX=redis_prefix,
            WS_STRICT_DELIVERY=True,
            LOG_STATS=False,
        )
        async with Emitter(config) as emitter:
            outcome: BaseException | None = None
            try:
                await emitter.send_to_group("g", {"type": "group", "data": "after the loss"})
            except DeliveryError as error:
                outcome = error
            shortfalls = emitter.counters.delivery_shortfalls
    finally:
        resume_process(a)
    assert isinstance(outcome, DeliveryError) and outcome.details["expected"] is None, (
        f"a send in the resync window after Redis lost its data returned normally "
        f"(delivery_shortfalls={shortfalls}): it reached no server, and g has a member on the stopped one"
    )


# --- 7. remote calls: a late answer settles another call --------------------------------------------


def gated_authorizer(gates: dict[str, asyncio.Event], refused: set[str]) -> Callable[[Any, str], Any]:
    async def authorize(_connection: Any, group: str) -> bool:
        gate = gates.get(group)
        if gate is not None:
            await gate.wait()
        return group not in refused

    return authorize


async def test_a_late_answer_from_a_slow_owner_does_not_settle_a_call_of_the_restarted_caller(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """Owner B is slow on a join (its authorize_join waits). Caller A's remote join times out
    (REMOTE_TIMEOUT); A restarts with the same SERVER_INSTANCE_ID (a redeployed pod) and asks B to
    join x to "secret", which B refuses. Correlation ids restart at "1" with every manager, so
    B's late answer to the old call ("1", done) settles the new call ("1"): A's join_group
    returns normally although B refused it and x is not in "secret"."""
    slow = asyncio.Event()
    app_b, manager_b = in_process(
        own_redis, redis_prefix, "review-b", authorize_join=gated_authorizer({"slow": slow}, {"secret"})
    )

    def caller(timeout: float) -> ConnectionManager:
        return ConnectionManager(
            WSConfig(
                BACKEND_TYPE="redis",
                REDIS_URL=own_redis.url,
                REDIS_CHANNEL_PREFIX=redis_prefix,
                SERVER_INSTANCE_ID="review-a",
                WS_REMOTE_TIMEOUT=timeout,
                LOG_STATS=False,
            )
        )

    async with app_lifespan(app_b), client_of(app_b, "x") as (_ws, x):
        a = caller(0.3)
        await a.start_tasks()
        try:
            with pytest.raises(BackendError) as timed_out:
                await a.join_group(x, "slow")
            assert timed_out.value.error_code == "REMOTE_TIMEOUT"
        finally:
            await a.stop_tasks()

        restarted = caller(5)
        await restarted.start_tasks()
        try:
            join = asyncio.create_task(restarted.join_group(x, "secret"))
            control = manager_b._control
            assert control is not None

            async def queued() -> bool:
                return control.qsize() >= 1

            assert await eventually(queued, 5, interval=0.01), "B never received the second command"
            slow.set()  # B finishes the old join and answers it
            outcome: BaseException | None = None
            try:
                await asyncio.wait_for(join, 10)
            except BaseException as error:
                outcome = error
        finally:
            await restarted.stop_tasks()
        in_secret = "secret" in manager_b.get_connection(x).groups  # type: ignore[union-attr]
        assert isinstance(outcome, AuthorizationError), (
            f"the restarted caller's join of {x} to 'secret' ended with {outcome!r} "
            f"(x in 'secret' on its owner: {in_secret}); the owner refused it"
        )


async def test_a_remote_join_that_timed_out_does_not_happen_later(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """A remote join that ended with REMOTE_TIMEOUT still runs when the slow owner gets to it:
    the caller was told it failed, and some time later x is a member anyway. A command carries
    no deadline, so REMOTE_TIMEOUT means "unknown", not "not done"."""
    slow = asyncio.Event()
    app_b, _owner = in_process(
        own_redis, redis_prefix, "review-b", authorize_join=gated_authorizer({"slow": slow}, set())
    )
    async with app_lifespan(app_b), client_of(app_b, "x") as (_ws, x):
        a = ConnectionManager(
            WSConfig(
                BACKEND_TYPE="redis",
                REDIS_URL=own_redis.url,
                REDIS_CHANNEL_PREFIX=redis_prefix,
                SERVER_INSTANCE_ID="review-a",
                WS_REMOTE_TIMEOUT=0.3,
                LOG_STATS=False,
            )
        )
        await a.start_tasks()
        try:
            with pytest.raises(BackendError) as timed_out:
                await a.join_group(x, "slow")
            assert timed_out.value.error_code == "REMOTE_TIMEOUT"
            slow.set()  # the owner gets to the command

            async def joined_anyway() -> int:
                return await a.group_size("slow")

            size = await eventually(joined_anyway, 3)
        finally:
            await a.stop_tasks()
        assert size == 0, (
            f"the join reported REMOTE_TIMEOUT to its caller, then happened: 'slow' has {size} member(s)"
        )


# --- 8. bounded memory: the reader's channel index --------------------------------------------------


async def test_joins_refused_during_an_outage_leave_nothing_in_the_reader(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """While Redis is down every join fails with BackendError (as promised) and is undone. But
    the reader's channel -> topic index keeps an entry for each topic ever asked for: nothing
    removes one that never went on the wire. 50 distinct groups tried during one outage leave 50
    entries for the life of the process (and so on for every outage)."""
    app, manager = in_process(own_redis, redis_prefix, "review-a", REDIS_REGISTRY_EXPIRY=3)
    async with app_lifespan(app), client_of(app, "x") as (_ws, name):
        reader = manager.backend.reader  # type: ignore[attr-defined]
        await asyncio.to_thread(own_redis.kill)

        async def down() -> bool:
            return reader.state is ReaderState.DOWN

        assert await eventually(down, 10, interval=0.02)
        for index in range(50):
            with pytest.raises(BackendError):
                await manager.join_group(name, f"tried{index}")
        await asyncio.to_thread(own_redis.start)

        async def ready() -> bool:
            return reader.state is ReaderState.READY

        assert await eventually(ready, 10, interval=0.02)
        stale = sorted(topic for topic in reader._topic_of.values() if topic not in reader.wanted)
        assert not stale, f"{len(stale)} topics nobody wants still indexed by the reader: {stale[:3]} ..."


# --- 9. one killed pub/sub connection, two subscribers for a moment ------------------------------------


async def test_a_killed_pubsub_connection_is_not_resubscribed_behind_the_readers_back(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """After `CLIENT KILL TYPE pubsub`, the reader's `get_message` fails; inside it, redis-py's
    retry layer (`Retry(NoBackoff(), 0)` still runs its failure callback) reconnects the old
    PubSub and re-SUBSCRIBEs every channel before raising; the reader then closes that object
    and subscribes on a new one. So for a moment this server has two subscriber connections:
    a PUBLISH then counts it twice (hiding another server that was missed), and one that lands
    on the old connection only counts as reached and is dropped with it. MONITOR shows the two
    SUBSCRIBEs from two client addresses. (Measured, ad hoc: 40 kills with a strict group send
    every ~1 ms lost 6-12 acknowledged sends; with the old PubSub's reconnect callback removed,
    3-4, the same-instant window the README states.)"""
    app, manager = in_process(own_redis, redis_prefix, "review-a")
    inbox = f"{redis_prefix}inbox:review-a"
    async with app_lifespan(app):
        assert manager.backend.listening("inbox:review-a")
        monitor_client = aioredis.Redis.from_url(own_redis.url)
        try:
            async with monitor_client.monitor() as monitor:
                await kill_pubsub_connections_at_least(own_redis, 1)
                subscribers: set[str] = set()

                async def collect() -> None:
                    while True:
                        command = await monitor.next_command()
                        words = command["command"].split()
                        if words and words[0].upper() == "SUBSCRIBE" and inbox in words:
                            subscribers.add(f"{command['client_address']}:{command['client_port']}")

                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(collect(), 1.0)
        finally:
            await monitor_client.aclose()
        assert manager.backend.listening("inbox:review-a")
        assert len(subscribers) == 1, (
            f"after one kill, {len(subscribers)} connections of this server subscribed its inbox: "
            f"{sorted(subscribers)}"
        )


async def kill_pubsub_connections_at_least(redis: RedisProcess, count: int) -> None:
    async with redis_admin(redis) as admin:
        assert await admin.client_kill_filter(_type="pubsub") >= count


# --- checked and held: coverage of races that could have broken the state ------------------------------


async def cluster_state(manager: ConnectionManager, user: str, group: str) -> dict[str, Any]:
    state = manager.backend.state  # type: ignore[attr-defined]
    return {
        "connections": await manager.count_connections(),
        "user_connections": await manager.count_user_connections(user),
        "group_size": await manager.group_size(group),
        "group_members": sorted(await manager.group_members(group)),
        "subscribed": f"group:{group}" in manager.subscribed_topics,
        "mirrored_memberships": sorted(state.memberships),
    }


async def test_held_a_join_and_a_leave_racing_on_one_server_end_in_the_leave(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """join_group(x, g) and then leave_group(x, g), both in flight at once (Redis paused): the
    cluster ends with x out of g, nothing counted, g unsubscribed, nothing mirrored."""
    app, manager = in_process(own_redis, redis_prefix, "review-a")
    async with app_lifespan(app), client_of(app, "x") as (_ws, name):
        connection = manager.get_connection(name)
        assert connection is not None
        async with redis_admin(own_redis) as admin:
            await admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
            join = asyncio.create_task(manager.join_group(name, "g"))
            while "g" not in connection.groups:
                await asyncio.sleep(0)
            leave = asyncio.create_task(manager.leave_group(name, "g"))
            await asyncio.gather(join, leave)
        assert "g" not in connection.groups
        assert await cluster_state(manager, "x", "g") == {
            "connections": 1,
            "user_connections": 1,
            "group_size": 0,
            "group_members": [],
            "subscribed": False,
            "mirrored_memberships": [],
        }


async def test_held_a_connection_closing_while_its_join_awaits_redis_leaves_no_membership(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """x's join of g is in flight (Redis paused) when x disconnects: once Redis answers, the
    cluster counts neither x nor its membership, and the server no longer listens to g."""
    app, manager = in_process(own_redis, redis_prefix, "review-a")
    async with app_lifespan(app):
        async with client_of(app, "x") as (ws, name):
            connection = manager.get_connection(name)
            assert connection is not None
            async with redis_admin(own_redis) as admin:
                await admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
                join = asyncio.create_task(manager.join_group(name, "g"))
                while "g" not in connection.groups:
                    await asyncio.sleep(0)
                await ws.disconnect()
                with contextlib.suppress(BaseError):
                    await join
        assert await cluster_state(manager, "x", "g") == {
            "connections": 0,
            "user_connections": 0,
            "group_size": 0,
            "group_members": [],
            "subscribed": False,
            "mirrored_memberships": [],
        }


async def test_held_a_reused_connection_id_waits_for_a_release_stalled_on_redis(
    own_redis: RedisProcess, redis_prefix: str
) -> None:
    """x (connection id "same", member of g) closes while Redis is paused, so its release
    waits; a new connection with the same id arrives meanwhile: it is admitted after the old
    one released everything, and the cluster counts exactly the new one (not in g)."""
    app, manager = in_process(own_redis, redis_prefix, "review-a", MAX_CONNECTIONS_PER_CLIENT=1)
    async with app_lifespan(app):
        old = Communicator(app, "/ws/u?cid=same")
        assert (await old.connect())[0]
        name = (await old.receive_json_from(5))["channel_name"]
        await manager.join_group(name, "g")
        async with redis_admin(own_redis) as admin:
            await admin.execute_command("CLIENT", "PAUSE", "400", "ALL")
            closing = asyncio.create_task(old.disconnect())
            while manager.get_connection(name) is not None:
                await asyncio.sleep(0)
            new = Communicator(app, "/ws/u?cid=same")
            accepted, code = await new.connect(timeout=10)
            await closing
        try:
            assert accepted, f"the reconnect with the same id was refused ({code} {new.close_reason!r})"
            assert (await new.receive_json_from(5))["channel_name"] == name
            state = await cluster_state(manager, "u", "g")
            assert (state["connections"], state["user_connections"], state["group_size"]) == (1, 1, 0), state
        finally:
            await new.disconnect()
