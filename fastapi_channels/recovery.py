"""HistoryGroups: this server's side of history groups, between the store and the sockets.

It keeps one `Sequencer` per local history group, so every local member gets every stored
message once and in order even when the pub/sub connection dropped some (the gap is read
back from the store), and it replays a re-joining connection's missed messages with no gap
and no duplicate while live ones keep arriving. The manager calls it; it never publishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from fastapi_channels.exceptions import CloseCode, ValidationError
from fastapi_channels.framing import encode_frame
from fastapi_channels.history import HistoryPage, HistoryPolicy, HistoryRead, JoinResult, Sequencer

if TYPE_CHECKING:
    from fastapi_channels.backends.base import BaseBackend
    from fastapi_channels.connection import Connection
    from fastapi_channels.registry import ConnectionRegistry
    from fastapi_channels.stats import Counters

__all__ = ["HistoryGroups", "parse_position"]

logger = logging.getLogger(__name__)

Held = tuple[str | bytes, frozenset[str]]

MAX_FILL_READS = 8
"""Store reads one fill makes when a new epoch begins under each of them; past it the gap is
given up (counted in `history_gaps`)."""


def parse_position(since: object) -> tuple[str, int]:
    """A client's last position: `(epoch, offset)`, a list of the two, or `{"epoch", "offset"}`."""
    epoch: object
    offset: object
    if isinstance(since, dict):
        epoch, offset = since.get("epoch"), since.get("offset")
    elif isinstance(since, list | tuple) and len(since) == 2:
        epoch, offset = since
    else:
        epoch = offset = None
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64:
        raise ValidationError("since needs an epoch string", error_code="INVALID_POSITION")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValidationError("since needs an offset >= 0", error_code="INVALID_POSITION")
    return epoch, offset


class HistoryGroups:
    """Sequencers of the local history groups, their gap fills, and replays on join."""

    def __init__(
        self,
        policy: HistoryPolicy,
        backend: BaseBackend,
        registry: ConnectionRegistry[Connection],
        counters: Counters,
        *,
        fast_path: Callable[[], bool],
        on_lost: Callable[[str], None],
        hold_limit: int,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.registry = registry
        self.counters = counters
        self._fast_path = fast_path
        self._on_lost = on_lost
        self.hold_limit = hold_limit
        self._sequencers: dict[str, Sequencer] = {}  # one per local history group
        self._fills: dict[str, asyncio.Task[None]] = {}  # at most one per local history group

    def applies(self, group: str) -> bool:
        return self.policy.applies(group)

    # --- live frames ---------------------------------------------------------------------------
    def on_frame(
        self, group: str, offset: int, epoch: str, frame: str | bytes, exclude: frozenset[str]
    ) -> None:
        """A history frame came through pub/sub: deliver it in order, or hold it behind a gap."""
        if not self.registry.has_group(group):
            return
        sequencer = self._sequencers.get(group)
        if sequencer is None:
            # Members here but no place yet (they joined before this server knew the group
            # keeps history): start at this frame.
            sequencer = self._sequencers[group] = Sequencer(epoch, offset - 1, limit=self.hold_limit)
        if sequencer.starting:
            # The first local member's join is reading the group's position: this frame waits
            # for it (`_start`), which says whether it is old or new to the members.
            if not sequencer.keep_early(epoch, offset, (frame, exclude)):
                self.counters.history_gaps += 1  # past the bound: lost to this server's members
            return
        if sequencer.anchor_next:
            # The position could not be read at the join: this server's place begins here.
            sequencer.anchor_next = False
            sequencer.epoch, sequencer.last = epoch, offset - 1
        verdict = sequencer.accept(epoch, offset)
        if verdict == "drop":
            return
        if verdict == "reset":
            self.counters.history_resets += 1
            self._on_lost(group)
            verdict = "hold"
        if verdict == "hold":
            if sequencer.hold(offset, (frame, exclude)):
                self._fill(group)
            else:
                # More waiting than the bound: give up the gap, deliver what is held.
                self.counters.history_gaps += 1
                self._release(group, sequencer)
            return
        self._deliver(group, offset, frame, exclude)

    def _deliver(self, group: str, offset: int, frame: str | bytes, exclude: frozenset[str]) -> None:
        wire = encode_frame(frame) if self._fast_path() else None
        for connection in self.registry.group_members(group):
            if exclude and connection.channel_name in exclude:
                continue
            replaying = connection.replaying
            if replaying is not None:
                state = replaying.get(group)
                if isinstance(state, list):  # a replay is being read: wait for it
                    if len(state) < self.hold_limit:
                        state.append((offset, frame))
                    else:  # past the hold's bound: lost to this member, and counted as such
                        connection.count_dropped(1)
                    continue
                if state is not None:  # a replay went up to `state`: older ones were sent
                    if offset <= state:
                        continue
                    del replaying[group]
                    if not replaying:
                        connection.replaying = None
            connection.enqueue(frame, wire)

    # --- gaps ----------------------------------------------------------------------------------
    def resync(self) -> None:
        """After the pub/sub connection came back: read what every local group missed."""
        for group in list(self._sequencers):
            self._fill(group)

    def forget(self, group: str) -> None:
        """The last local member left: this server's place in the group no longer matters."""
        self._sequencers.pop(group, None)
        task = self._fills.pop(group, None)
        if task is not None:
            task.cancel()

    def _fill(self, group: str) -> None:
        task = self._fills.get(group)
        if task is not None and not task.done():
            return
        sequencer = self._sequencers.get(group)
        if sequencer is None or sequencer.epoch is None or sequencer.starting:
            return  # no place yet: the join reading the position will say where it begins
        sequencer.filling = True
        self._fills[group] = asyncio.get_running_loop().create_task(
            self._run_fill(group, sequencer), name=f"fastapi-channels-history-fill:{group}"
        )

    async def _run_fill(self, group: str, sequencer: Sequencer) -> None:
        size, ttl = self.policy.size, self.policy.ttl
        read: HistoryRead | None = None
        for _ in range(MAX_FILL_READS):
            generation = sequencer.generation
            try:
                read = await self.backend.read_history(group, sequencer.last, size, size, ttl)
                if read.epoch is not None and read.epoch != sequencer.epoch and sequencer.last:
                    # Another epoch: what this server has is not a position in it; read it all.
                    read = await self.backend.read_history(group, 0, size, size, ttl)
            except Exception as exc:
                logger.warning("could not read the history of %s to fill a gap: %s", group, exc)
                read = None
            if self._sequencers.get(group) is not sequencer:
                return
            if sequencer.generation == generation:
                break
            # A new epoch began while the store was read (e.g. Redis restarted empty): that read
            # is of the old place; read again from the new one.
        else:
            read = None  # epochs keep changing under the reads: give the gap up, counted
        if read is not None and read.epoch is not None:
            if read.epoch != sequencer.epoch:
                # The store is on another epoch than the frames seen: start from its first.
                self.counters.history_resets += 1
                self._on_lost(group)
                sequencer.epoch, sequencer.last = read.epoch, 0
                sequencer.held.clear()
            if read.first > sequencer.last + 1 and read.offset > sequencer.last:
                self.counters.history_gaps += 1  # some were trimmed before this server came back
            for entry in read.entries:
                if entry.offset > sequencer.last:
                    sequencer.last = entry.offset
                    self.counters.history_filled += 1
                    self._deliver(group, entry.offset, entry.frame, entry.exclude)
        self._release(group, sequencer)

    def _release(self, group: str, sequencer: Sequencer) -> None:
        sequencer.filling = False
        released, holes = sequencer.release()
        self.counters.history_gaps += holes  # offsets the store could not give: members skip them
        for offset, (frame, exclude) in released:
            self._deliver(group, offset, frame, exclude)

    def stop(self) -> None:
        for task in self._fills.values():
            task.cancel()
        self._fills.clear()
        self._sequencers.clear()

    # --- joins and reads -----------------------------------------------------------------------
    def prepare(self, group: str) -> None:
        """Before a join subscribes: the first local member of a group starts this server's
        place at the group's position read after the subscription (live frames wait)."""
        if group not in self._sequencers:
            self._sequencers[group] = Sequencer(limit=self.hold_limit, starting=True)

    def _start(self, group: str, read: HistoryRead | None) -> None:
        """The position read at a join: where a server's place in a new local group starts.

        Frames heard since the subscription waited (`Sequencer.early`); they go through the
        normal path now: those at or before the position are old to the members (dropped),
        the next ones delivered, and one after a hole starts a fill from the position. (A
        frame must never set the place itself: it would start at offset 0 and a fill would
        send every member the group's whole retained history.)"""
        sequencer = self._sequencers.get(group)
        if sequencer is None or not sequencer.starting:
            return
        sequencer.starting = False
        early, sequencer.early = sequencer.early, []
        if read is not None and read.epoch is not None:
            sequencer.epoch, sequencer.last = read.epoch, read.offset
        elif read is None:
            if early:  # the position is unknown: begin at the first frame heard
                sequencer.epoch, sequencer.last = early[0][0], early[0][1] - 1
            else:
                sequencer.anchor_next = True
        # else: no history yet: the first epoch seen starts at offset 1.
        for epoch, offset, (frame, exclude) in early:
            self.on_frame(group, offset, epoch, frame, exclude)

    def hold_for_replay(self, connection: Connection, group: str) -> None:
        """Before a join with a position: live frames for `group` wait until the replay is done."""
        if connection.replaying is None:
            connection.replaying = {}
        connection.replaying[group] = []

    def drop_hold(self, connection: Connection, group: str) -> None:
        """The join failed: nothing waits any more (frames held meanwhile are not for it). If
        it was the group's first here, its place begins at the frames heard meanwhile (or the
        next one): other members may be here already, and must not wait for a read that will
        not come."""
        self._end_hold(connection, group)
        self._start(group, None)

    async def replay(self, connection: Connection, group: str, since: tuple[str, int] | None) -> JoinResult:
        """After the join: send the missed messages, then the held live ones, without a gap or
        a duplicate; also where this server's place starts when the group is new here."""
        size, ttl = self.policy.size, self.policy.ttl
        after = since[1] if since is not None else 1 << 62
        try:
            read = await self.backend.read_history(group, after, size if since is not None else 0, size, ttl)
        except BaseException:
            self._start(group, None)
            self._finish_hold(connection, group, None)
            raise
        self._start(group, read)
        if since is None:
            self._finish_hold(connection, group, None)
            return JoinResult(False, 0, read.epoch, read.offset)
        if not read.recovers(*since):
            self._finish_hold(connection, group, None)
            return JoinResult(False, 0, read.epoch, read.offset)
        frames = [entry.frame for entry in read.entries]
        dropped_before = connection.messages_dropped
        queued, settled = await self._paced(connection, frames)
        self.counters.history_replayed += queued
        if settled < len(frames) or connection.messages_dropped > dropped_before:
            # Cut short (the client stopped reading and was closed, or its policy refused or
            # dropped a frame meanwhile): the frames never queued nor counted are counted as
            # dropped now, and the join says not recovered (the client resyncs).
            connection.count_dropped(len(frames) - settled)
            self._finish_hold(connection, group, read.entries[queued - 1].offset if queued else since[1])
            return JoinResult(False, queued, read.epoch, read.offset)
        last = read.entries[-1].offset if read.entries else since[1]
        # No await from here on: the hand-over to live frames is one step.
        self._finish_hold(connection, group, last)
        return JoinResult(True, queued, read.epoch, max(read.offset, last))

    async def _paced(self, connection: Connection, frames: list[str]) -> tuple[int, int]:
        """Enqueue a replay without overflowing the connection's buffer: past half of either
        bound it waits for the client to read, as live traffic would. A client that stops
        reading for WS_CLOSE_TIMEOUT is closed as a slow consumer (1013), never left with
        half a replay: it reconnects and asks again. Returns how many frames were queued and
        how many were settled: queued, or refused by the connection (which counted it as
        dropped); all of them unless the connection closed or refused one."""
        room = max(1, connection.max_messages // 2)
        byte_room = max(1, connection.max_bytes // 2)
        for queued, frame in enumerate(frames):
            if not await connection.wait_for_room(room, byte_room - len(frame), connection.close_timeout):
                if connection.is_open:
                    self.counters.slow_consumer_closes += 1
                    connection.close(CloseCode.TRY_AGAIN_LATER, "slow consumer", flush=False)
                return queued, queued
            if not connection.enqueue(frame):
                return queued, queued + 1  # refused (closing, or by its policy): counted there
        return len(frames), len(frames)

    def _finish_hold(self, connection: Connection, group: str, last: int | None) -> None:
        """End the hold: send what was held after `last` (everything when None), and keep
        `last` as a floor while this server's own delivery may still be behind it."""
        held = self._end_hold(connection, group)
        for offset, frame in held:
            if last is None or offset > last:
                connection.enqueue(frame)
        if last is not None and held:
            last = max(last, held[-1][0])
        sequencer = self._sequencers.get(group)
        if last is not None and (sequencer is None or sequencer.last < last):
            if connection.replaying is None:
                connection.replaying = {}
            connection.replaying[group] = last

    def _end_hold(self, connection: Connection, group: str) -> list[tuple[int, Any]]:
        holding = connection.replaying
        if holding is None:
            return []
        held = holding.pop(group, [])
        if not holding:
            connection.replaying = None
        return held if isinstance(held, list) else []

    async def page(self, group: str, since: tuple[str, int] | None, limit: int) -> HistoryPage:
        """The retained messages after `since` (all retained when its epoch is not current)."""
        size, ttl = self.policy.size, self.policy.ttl
        limit = max(0, min(limit, size))
        read = await self.backend.read_history(group, 0, 0, size, ttl)
        after = since[1] if since is not None and since[0] == read.epoch else 0
        if limit and read.epoch is not None:
            read = await self.backend.read_history(group, after, limit, size, ttl)
        messages = [orjson.loads(entry.frame) for entry in read.entries] if limit else []
        return HistoryPage(messages, read.epoch, read.offset)
