"""What every Redis topology must let a worker do: an Emitter and a SyncEmitter reach a member."""

from __future__ import annotations

import asyncio

from fastapi_channels import Emitter, SyncEmitter, WSConfig
from fastapi_channels.testing import ServerHandle
from tests.support.client import Client

__all__ = ["emitters_reach_a_member"]


async def emitters_reach_a_member(server: ServerHandle, config: WSConfig) -> None:
    """A member of "news" on `server` gets a group send and a user send from an Emitter, and a
    broadcast from a SyncEmitter in a thread, all made with `config`."""
    member = await Client.open(server.ws_url, "carol")
    await member.call("joined", op="join", group="news")
    async with Emitter(config) as emitter:
        await emitter.send_to_group("news", {"type": "group", "data": "from a worker"})
        assert await emitter.send_to_user("carol", {"type": "user", "data": "for carol"}) == 1
    with SyncEmitter(config) as blocking:
        await asyncio.to_thread(blocking.broadcast, {"type": "broadcast", "data": "from a script"})
    assert (await member.expect("group"))["data"] == "from a worker"
    assert (await member.expect("user"))["data"] == "for carol"
    assert (await member.expect("broadcast"))["data"] == "from a script"
