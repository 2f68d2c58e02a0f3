"""A kick of a connection on another server: done, idempotent, or an error, never a silent no-op.

README (*Remote means done*): an owner that is gone or silent is an error, never a silent
success. A disconnect used to swallow every CONNECTION_NOT_FOUND to stay idempotent, so a
kick sent to an owner that was alive but not hearing its inbox returned normally while the
connection stayed open (found by a black-box review, 2026-12-02). Now only an owner that is
gone (its connections went with it) makes a disconnect a quiet success.
"""

from __future__ import annotations

import pytest

from fastapi_channels import ConnectionManager, Emitter, WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.exceptions import ConnectionError as ChannelsConnectionError
from fastapi_channels.testing import Communicator, LocalCluster
from tests.support.eventually import eventually
from tests.support.member_app import member_app
from tests.support.redis_server import RedisProcess


async def _go_deaf(manager: ConnectionManager) -> None:
    """Unsubscribe the manager's reader from everything behind its back: alive (its liveness
    key holds for REDIS_REGISTRY_EXPIRY), not hearing. Its keeper is stopped, or its probe
    would notice and rebuild the reader in the middle of the test."""
    backend = manager.backend
    assert isinstance(backend, RedisBackend) and backend._keeper is not None
    backend._keeper.cancel()
    reader = backend.reader
    assert reader is not None and reader._pubsub is not None
    await reader._pubsub.unsubscribe()


async def test_a_kick_sent_to_an_owner_that_does_not_hear_raises_and_the_client_stays_open(
    redis_server: RedisProcess,
) -> None:
    async with LocalCluster(2, redis_url=redis_server.url, app_factory=member_app) as cluster:
        kicker, owner = cluster.managers
        config = WSConfig(
            BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=cluster.prefix
        )
        async with Communicator(cluster.apps[1], "/ws/victim") as victim, Emitter(config) as emitter:
            name = (await victim.receive_json_from(5))["channel_name"]
            await _go_deaf(owner)

            with pytest.raises(ChannelsConnectionError) as raised:
                await kicker.disconnect(name, 4001, "kicked")
            assert raised.value.error_code == "CONNECTION_NOT_FOUND" and raised.value.retryable
            with pytest.raises(ChannelsConnectionError) as raised:
                await emitter.disconnect(name, 4001, "kicked")
            assert raised.value.error_code == "CONNECTION_NOT_FOUND" and raised.value.retryable

            connection = owner.get_connection(name)
            assert connection is not None and connection.is_open  # nothing closed it


async def test_a_kick_of_a_connection_whose_server_is_gone_is_done(redis_server: RedisProcess) -> None:
    async with LocalCluster(2, redis_url=redis_server.url, app_factory=member_app) as cluster:
        kicker, owner = cluster.managers
        config = WSConfig(
            BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=cluster.prefix
        )
        victim = Communicator(cluster.apps[1], "/ws/victim")
        connected, _ = await victim.connect()
        assert connected
        name = (await victim.receive_json_from(5))["channel_name"]
        await owner.stop_tasks()  # closes its connections and leaves the cluster
        await eventually(lambda: owner.get_connection(name) is None)

        await kicker.disconnect(name, 4001, "kicked")  # idempotent: nothing to do, no error
        async with Emitter(config) as emitter:
            await emitter.disconnect(name, 4001, "kicked")
        await victim.disconnect()
