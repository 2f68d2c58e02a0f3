"""History groups, the pure parts and the store contract.

- `HistoryPolicy` (which groups keep history), `Sequencer` (one server's place in a group),
  `positioned_frame` / `split_positioned_body` (what a stored frame looks like, what may be
  stored), `HistoryRead.recovers` (the recovery decision), `parse_position`;
- `memory_history.HistoryStore`: offsets, the size window, the TTL, epochs;
- the backend contract: the memory backend and the Redis backend (on the session's own
  redis-server) give the same answers to the same `publish_history` / `read_history` calls,
  and those answers are the documented ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from fastapi_channels.backends import BaseBackend, MemoryBackend, MemoryHub, memory_history
from fastapi_channels.backends.memory_history import HistoryStore
from fastapi_channels.config import WSConfig
from fastapi_channels.exceptions import ValidationError
from fastapi_channels.history import (
    HistoryEntry,
    HistoryPolicy,
    HistoryRead,
    Sequencer,
    positioned_frame,
    split_positioned_body,
)
from fastapi_channels.recovery import parse_position
from fastapi_channels.routing import decode_envelope, group_topic

# --- HistoryPolicy --------------------------------------------------------------------------------


def test_no_pattern_means_no_history_group() -> None:
    policy = HistoryPolicy()
    assert not policy.applies("room.1")
    assert not policy.applies("*")


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("room.1", True),
        ("room.", True),
        ("room.a.b", True),
        ("room", False),
        ("Room.1", False),  # case-sensitive, like every name
        ("xroom.1", False),
        ("news", True),
        ("news2", False),
        ("a:b|c*", False),
        ("feed-7", True),
        ("feed-77", False),
        ("feed-x", False),
        ("My Room", True),
    ],
)
def test_policy_globs(group: str, expected: bool) -> None:
    policy = HistoryPolicy(["room.*", "news", "feed-[0-9]", "My *"])
    assert policy.applies(group) is expected
    assert policy.applies(group) is expected  # and the same from the cache


def test_adding_a_pattern_applies_to_groups_already_judged() -> None:
    policy = HistoryPolicy(["room.*"])
    assert not policy.applies("news")  # cached as False
    policy.add("news")
    assert policy.applies("news")
    policy.add("news")
    assert policy.patterns == ["room.*", "news"]


def test_the_policy_cache_is_bounded() -> None:
    policy = HistoryPolicy(["room.*"])
    policy.MAX_CACHED = 50
    for index in range(500):
        assert policy.applies(f"room.{index}")
        assert len(policy._cache) <= 50
    assert policy.applies("room.1") and not policy.applies("hall.1")


def test_ws_history_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_HISTORY_GROUPS", " room.* , news,, feed-? ")
    monkeypatch.setenv("WS_HISTORY_SIZE", "25")
    monkeypatch.setenv("WS_HISTORY_TTL", "7")
    config = WSConfig()
    assert config.WS_HISTORY_GROUPS == ["room.*", "news", "feed-?"]
    assert (config.WS_HISTORY_SIZE, config.WS_HISTORY_TTL) == (25, 7)


@pytest.mark.parametrize(("name", "value"), [("WS_HISTORY_SIZE", "0"), ("WS_HISTORY_TTL", "0")])
def test_ws_history_bounds_are_validated(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        WSConfig()


# --- positioned frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{}", '{"offset":7,"epoch":"e1"}'),
        ("{ }", '{"offset":7,"epoch":"e1"}'),
        ('{"a":1}', '{"offset":7,"epoch":"e1","a":1}'),
        ('{ "a" : 1 }', '{"offset":7,"epoch":"e1","a" : 1 }'),
        ('{\n\t"a":[1,{"b":"}"}]}', '{"offset":7,"epoch":"e1","a":[1,{"b":"}"}]}'),
        ('{"t":"caf\u00e9 \u2603"}', '{"offset":7,"epoch":"e1","t":"caf\u00e9 \u2603"}'),
    ],
)
def test_positioned_frame_puts_the_position_first(body: str, expected: str) -> None:
    frame = positioned_frame(body, 7, "e1")
    assert frame == expected
    value = orjson.loads(frame)
    assert list(value)[:2] == ["offset", "epoch"]
    assert value["offset"] == 7 and value["epoch"] == "e1"
    assert {k: v for k, v in value.items() if k not in ("offset", "epoch")} == orjson.loads(body)


def test_split_positioned_body_accepts_a_json_object() -> None:
    body = orjson.dumps({"type": "chat", "text": "hi", "nested": {"offset": 1}}).decode()
    assert split_positioned_body(body, "room.1") == body  # only top-level keys are reserved


@pytest.mark.parametrize(
    "frame",
    [b'{"a":1}', b"\x00\x01", "plain text", "[1,2]", '"a string"', "12", "null", "{not json"],
)
def test_a_history_group_needs_a_json_object(frame: str | bytes) -> None:
    with pytest.raises(ValidationError) as raised:
        split_positioned_body(frame, "room.1")
    assert raised.value.error_code == "HISTORY_NEEDS_OBJECT"
    assert raised.value.details == {"group": "room.1"}


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        ('{"offset":1,"a":2}', ["offset"]),
        ('{"a":2,"epoch":"x"}', ["epoch"]),
        ('{"epoch":"x","offset":3}', ["offset", "epoch"]),
        ('{"\\u006fffset":1}', ["offset"]),  # an escaped key is the same key
        ('{"offset":null}', ["offset"]),
    ],
)
def test_reserved_keys_are_refused(body: str, keys: list[str]) -> None:
    with pytest.raises(ValidationError) as raised:
        split_positioned_body(body, "room.1")
    assert raised.value.error_code == "RESERVED_KEY"
    assert raised.value.details == {"group": "room.1", "keys": keys}


# --- parse_position -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since", [("e1", 3), ["e1", 3], {"epoch": "e1", "offset": 3}, {"offset": 3, "epoch": "e1", "x": 0}]
)
def test_a_position_in_any_documented_form(since: Any) -> None:
    assert parse_position(since) == ("e1", 3)


@pytest.mark.parametrize(
    "since",
    [
        None,
        "e1:3",
        ("e1",),
        ("e1", 3, 4),
        ("", 3),
        ("e" * 65, 3),
        (3, 3),
        ("e1", -1),
        ("e1", "3"),
        ("e1", 3.0),
        ("e1", True),
        {"epoch": "e1"},
        {"offset": 3},
    ],
)
def test_a_bad_position_is_refused(since: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_position(since)
    assert raised.value.error_code == "INVALID_POSITION"


# --- HistoryRead.recovers -------------------------------------------------------------------------


def read(epoch: str | None, offset: int, first: int, offsets: list[int]) -> HistoryRead:
    return HistoryRead(epoch, offset, first, [HistoryEntry(o, f'{{"offset":{o}}}') for o in offsets])


@pytest.mark.parametrize(
    ("answer", "since", "expected"),
    [
        (read(None, 0, 1, []), ("e", 0), False),  # no history at all
        (read("e", 10, 1, list(range(4, 11))), ("other", 3), False),  # another epoch
        (read("e", 10, 1, []), ("e", 10), True),  # up to date: nothing to replay
        (read("e", 10, 1, []), ("e", 11), False),  # ahead of the group: not a position it gave
        (read("e", 10, 4, list(range(4, 11))), ("e", 3), True),  # exactly the window
        (read("e", 10, 4, list(range(5, 11))), ("e", 3), False),  # the first one is missing
        (read("e", 10, 4, list(range(4, 11))), ("e", 2), False),  # older than the window
        (read("e", 10, 5, list(range(4, 11))), ("e", 3), False),  # 4 past the TTL
        (read("e", 10, 1, [1, 2, 3]), ("e", 0), True),  # from the very start
        (read("e", 10, 2, [2, 3]), ("e", 0), False),  # the very start is gone
        (read("e", 10, 11, []), ("e", 9), False),  # everything after 9 expired
    ],
)
def test_recovers(answer: HistoryRead, since: tuple[str, int], expected: bool) -> None:
    assert answer.recovers(*since) is expected


# --- Sequencer ------------------------------------------------------------------------------------


def test_a_sequencer_without_an_epoch_starts_at_the_first_message_of_the_first_epoch() -> None:
    """Sequencer() is a server's place in a group that had no history when it began: the
    first epoch seen starts at offset 1, so a first frame after it shows a gap to fill."""
    sequencer = Sequencer()
    assert sequencer.accept("e", 5) == "hold"
    assert (sequencer.epoch, sequencer.last) == ("e", 0)
    fresh = Sequencer()
    assert fresh.accept("e", 1) == "deliver"
    assert fresh.accept("e", 2) == "deliver"
    assert fresh.accept("e", 2) == "drop"
    assert fresh.last == 2


def test_a_sequencer_placed_at_a_frame_starts_there() -> None:
    sequencer = Sequencer("e", 4)
    assert sequencer.accept("e", 5) == "deliver"
    assert sequencer.accept("e", 2) == "drop"
    assert sequencer.last == 5


def test_a_gap_holds_and_a_fill_releases_in_order() -> None:
    sequencer = Sequencer("e", 3)
    assert sequencer.accept("e", 6) == "hold"
    assert sequencer.hold(6, "six")
    sequencer.filling = True
    assert sequencer.accept("e", 7) == "hold"  # in order, but a fill is running: wait behind it
    assert sequencer.hold(7, "seven")
    assert sequencer.accept("e", 4) == "hold"
    assert sequencer.hold(4, "four")
    sequencer.filling = False
    sequencer.last = 5  # the fill delivered 4 and 5 from the store
    assert sequencer.release() == ([(6, "six"), (7, "seven")], 0)  # 4 was filled: not twice
    assert sequencer.held == {} and sequencer.last == 7
    assert sequencer.accept("e", 8) == "deliver"


def test_what_a_fill_could_not_find_is_given_up_in_order() -> None:
    sequencer = Sequencer("e", 3)
    for offset in (9, 5, 7):
        sequencer.hold(offset, offset)
    assert sequencer.release() == ([(5, 5), (7, 7), (9, 9)], 3)  # 4, 6 and 8 given up: three holes
    assert sequencer.last == 9 and sequencer.held == {}


def test_holding_is_bounded() -> None:
    sequencer = Sequencer("e", 0, limit=3)
    assert all(sequencer.hold(offset, None) for offset in (2, 3, 4))
    assert not sequencer.hold(5, None)
    assert len(sequencer.held) == 3


def test_a_new_epoch_is_a_reset() -> None:
    """A new epoch starts over from its first message: the caller holds the frame that showed
    it and reads the rest from the store (the frame may not be the epoch's first)."""
    sequencer = Sequencer("e1", 40)
    sequencer.hold(42, "x")
    assert sequencer.accept("e2", 3) == "reset"
    assert (sequencer.epoch, sequencer.last, sequencer.held) == ("e2", 0, {})
    assert sequencer.accept("e2", 1) == "deliver"
    assert sequencer.accept("e2", 1) == "drop"


# --- the memory store -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(memory_history, "time", SimpleNamespace(time=fake))
    return fake


def offsets_of(answer: HistoryRead) -> list[int]:
    return [entry.offset for entry in answer.entries]


def test_the_store_numbers_each_group_from_one(clock: Clock) -> None:
    store = HistoryStore()
    numbered = [store.append("a", f'{{"n":{n}}}', 10, 60) for n in range(3)]
    assert [offset for offset, _, _ in numbered] == [1, 2, 3]
    assert len({epoch for _, epoch, _ in numbered}) == 1
    _, epoch, frame = numbered[1]
    assert frame == positioned_frame('{"n":1}', 2, epoch)
    assert store.append("b", "{}", 10, 60)[0] == 1
    assert store.append("b", "{}", 10, 60)[1] != epoch  # every group has an epoch of its own


def test_the_store_reads_the_window(clock: Clock) -> None:
    store = HistoryStore()
    for n in range(8):
        epoch = store.append("a", f'{{"n":{n}}}', 5, 60)[1]
    assert store.read("nope", 0, 10, 5, 60) == HistoryRead(None, 0, 1, [])
    everything = store.read("a", 0, 100, 5, 60)
    assert (everything.epoch, everything.offset, everything.first) == (epoch, 8, 4)
    assert offsets_of(everything) == [4, 5, 6, 7, 8]
    assert offsets_of(store.read("a", 5, 100, 5, 60)) == [6, 7, 8]
    assert offsets_of(store.read("a", 5, 2, 5, 60)) == [6, 7]
    assert offsets_of(store.read("a", 8, 100, 5, 60)) == []
    assert store.read("a", 3, 100, 5, 60).recovers(epoch, 3)
    assert not store.read("a", 2, 100, 5, 60).recovers(epoch, 2)


def test_the_store_forgets_idle_groups(clock: Clock) -> None:
    """WS_HISTORY_TTL is how long an idle group's history lives: a message keeps the whole
    history alive; idle past the TTL it is gone, and the next message opens a new epoch."""
    store = HistoryStore()
    epoch = store.append("a", "{}", 100, 10)[1]  # 1 at t
    clock.now += 6
    store.append("a", "{}", 100, 10)  # 2 at t+6
    clock.now += 6
    store.append("a", "{}", 100, 10)  # 3 at t+12: the group was never idle for 10 s
    answer = store.read("a", 0, 100, 100, 10)
    assert (answer.epoch, answer.offset, answer.first, offsets_of(answer)) == (epoch, 3, 1, [1, 2, 3])
    assert answer.recovers(epoch, 0)
    clock.now += 10.5  # idle past the TTL: the group's history is gone
    assert store.read("a", 0, 100, 100, 10) == HistoryRead(None, 0, 1, [])
    offset, new_epoch, _ = store.append("a", "{}", 100, 10)
    assert offset == 1 and new_epoch != epoch


def test_the_store_keeps_a_bounded_number_of_groups(clock: Clock) -> None:
    store = HistoryStore(limit=3)
    epochs = {group: store.append(group, "{}", 10, 60)[1] for group in "abc"}
    store.append("a", "{}", 10, 60)  # a is the most recently used now
    store.append("d", "{}", 10, 60)  # b goes
    assert len(store) == 3
    assert store.read("b", 0, 10, 10, 60).epoch is None
    assert store.read("a", 0, 10, 10, 60).epoch == epochs["a"]
    assert store.append("b", "{}", 10, 60)[:2] != (2, epochs["b"])


# --- the backend contract: memory and Redis ----------------------------------------------------------


class Store:
    """One started backend and the envelopes published on the topics it subscribed to."""

    def __init__(self, backend: BaseBackend, settle: float) -> None:
        self.backend = backend
        self.settle = settle
        self.received: list[tuple[str, bytes]] = []

    def on_message(self, topic: str, payload: bytes) -> None:
        self.received.append((topic, payload))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    backend: BaseBackend
    if request.param == "memory":
        backend, settle = MemoryBackend(MemoryHub()), 0.0
    else:
        from fastapi_channels.backends.redis import RedisBackend

        server = request.getfixturevalue("redis_server")
        backend, settle = RedisBackend(server.url, prefix=request.getfixturevalue("redis_prefix")), 0.2
    made = Store(backend, settle)
    await backend.start(f"srv-{uuid.uuid4().hex[:6]}", made.on_message)
    try:
        yield made
    finally:
        await backend.stop()


def normaliser() -> Callable[[str | None], str | None]:
    """Epochs are random: name them e1, e2, ... in the order they are met."""
    names: dict[str, str] = {}

    def name(epoch: str | None) -> str | None:
        if epoch is None:
            return None
        return names.setdefault(epoch, f"e{len(names) + 1}")

    return name


async def publish(store: Store, group: str, body: str, size: int = 5, ttl: int = 3600) -> tuple[int, str]:
    _, offset, epoch = await store.backend.publish_history(
        group_topic(group), group, b"", b"", body, size, ttl
    )
    return offset, epoch


async def test_publish_history_numbers_stores_and_publishes(store: Store) -> None:
    backend = store.backend
    topic = group_topic("room.1")
    assert await backend.read_history("room.1", 0, 10, 5, 3600) == HistoryRead(None, 0, 1, [])
    await backend.subscribe(topic)
    bodies = ["{}", '{ "n" : 1 }', '{"n":2,"t":"caf\u00e9"}', '{\n"n":3}']
    epochs = set()
    for index, body in enumerate(bodies, 1):
        delivery, offset, epoch = await backend.publish_history(topic, "room.1", b"", b"", body, 5, 3600)
        assert offset == index and delivery.reached == 1
        epochs.add(epoch)
    assert len(epochs) == 1
    (epoch,) = epochs
    await asyncio.sleep(store.settle)
    envelopes = [decode_envelope(payload) for t, payload in store.received if t == topic]
    frames = [positioned_frame(body, index, epoch) for index, body in enumerate(bodies, 1)]
    assert [e.position for e in envelopes] == [(i, epoch) for i in range(1, 5)]
    assert [e.frame for e in envelopes] == frames  # the Lua store builds the same bytes
    answer = await backend.read_history("room.1", 0, 10, 5, 3600)
    assert answer == HistoryRead(epoch, 4, 1, [HistoryEntry(i, f) for i, f in enumerate(frames, 1)])
    await backend.unsubscribe(topic)


async def test_publish_history_keeps_the_exclusion_header(store: Store) -> None:
    from fastapi_channels.routing import exclusion_header

    topic = group_topic("room.x")
    await store.backend.subscribe(topic)
    excluded = frozenset({"srv!a", "srv!b"})
    await store.backend.publish_history(topic, "room.x", b"", exclusion_header(excluded), "{}", 5, 3600)
    await asyncio.sleep(store.settle)
    (envelope,) = [decode_envelope(p) for t, p in store.received if t == topic]
    assert envelope.exclude == excluded and envelope.position is not None and envelope.position[0] == 1


READS = [(0, 100), (0, 0), (2, 100), (3, 100), (3, 2), (5, 0), (7, 100), (8, 100), (9, 100), (100, 100)]


async def transcript(store: Store) -> list[Any]:
    """The same calls on any backend; epochs named in the order met."""
    name = normaliser()
    out: list[Any] = []
    for group in ("a", "b"):
        for n in range(8 if group == "a" else 2):
            offset, epoch = await publish(store, group, f'{{"n":{n}}}')
            out.append(("published", group, offset, name(epoch)))
    for group in ("a", "b", "none"):
        for after, limit in READS:
            answer = await store.backend.read_history(group, after, limit, 5, 3600)
            out.append(
                (
                    "read",
                    group,
                    after,
                    limit,
                    name(answer.epoch),
                    answer.offset,
                    answer.first,
                    [(e.offset, orjson.loads(e.frame)["n"]) for e in answer.entries],
                )
            )
    return out


EXPECTED_READS_OF_A = {
    (0, 100): (4, [4, 5, 6, 7, 8]),
    (0, 0): (4, []),
    (2, 100): (4, [4, 5, 6, 7, 8]),
    (3, 100): (4, [4, 5, 6, 7, 8]),
    (3, 2): (4, [4, 5]),
    (5, 0): (4, []),
    (7, 100): (4, [8]),
    (8, 100): (4, []),
    (9, 100): (4, []),
    (100, 100): (4, []),
}


async def test_both_backends_answer_the_documented_window(store: Store) -> None:
    got = await transcript(store)
    published = [step for step in got if step[0] == "published"]
    assert published == [("published", "a", n, "e1") for n in range(1, 9)] + [
        ("published", "b", n, "e2") for n in (1, 2)
    ]
    reads = {(step[1], step[2], step[3]): step[4:] for step in got if step[0] == "read"}
    for (after, limit), (first, offsets) in EXPECTED_READS_OF_A.items():
        epoch, offset, got_first, entries = reads[("a", after, limit)]
        assert (epoch, offset, got_first) == ("e1", 8, first), (after, limit)
        assert [o for o, _ in entries] == offsets, (after, limit)
        assert all(n == o - 1 for o, n in entries)
    assert reads[("b", 0, 100)] == ("e2", 2, 1, [(1, 0), (2, 1)])
    for after, limit in READS:
        assert reads[("none", after, limit)] == (None, 0, 1, [])


async def test_the_two_backends_give_the_same_transcript(request: pytest.FixtureRequest) -> None:
    """The same calls on a memory backend and a Redis backend: the same answers, field by field."""
    from fastapi_channels.backends.redis import RedisBackend

    server = request.getfixturevalue("redis_server")
    transcripts = []
    for backend, settle in (
        (MemoryBackend(MemoryHub()), 0.0),
        (RedisBackend(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:"), 0.2),
    ):
        made = Store(backend, settle)
        await backend.start(f"srv-{uuid.uuid4().hex[:6]}", made.on_message)
        try:
            transcripts.append(await transcript(made))
        finally:
            await backend.stop()
    memory, redis = transcripts
    assert memory == redis


async def until_second_fraction(low: float, high: float) -> float:
    """Wait until the wall clock's fraction of a second is in [low, high); return that second."""
    while True:
        now = time.time()
        if low <= now % 1 < high:
            return float(int(now))
        await asyncio.sleep(0.01)


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_an_idle_group_past_the_ttl_gets_a_new_epoch(store: Store) -> None:
    _, epoch = await publish(store, "idle", "{}", ttl=1)
    await asyncio.sleep(1.5)
    assert await store.backend.read_history("idle", 0, 10, 5, 1) == HistoryRead(None, 0, 1, [])
    offset, new_epoch = await publish(store, "idle", "{}", ttl=1)
    assert offset == 1 and new_epoch != epoch


async def test_first_does_not_depend_on_how_much_is_read(store: Store) -> None:
    """`HistoryRead.first` is "the first offset still recoverable": the same whatever `after`
    and `limit` the read asked for. 5 messages with a window of 3: 1 and 2 are out."""
    for _ in range(5):
        _, epoch = await publish(store, "first", "{}", size=3, ttl=60)
    full = await store.backend.read_history("first", 0, 100, 3, 60)
    assert full.first == 3 and full.epoch == epoch and offsets_of(full) == [3, 4, 5]
    position_only = await store.backend.read_history("first", 0, 0, 3, 60)
    late = await store.backend.read_history("first", 4, 100, 3, 60)
    assert (position_only.first, late.first) == (full.first, full.first)


class _Member:
    """What HistoryGroups delivers to: a connection's name, its replay state and its queue."""

    channel_name = "s!member"

    def __init__(self) -> None:
        self.replaying: Any = None
        self.frames: list[Any] = []

    def enqueue(self, frame: Any, wire: Any = None) -> bool:
        self.frames.append(frame)
        return True


class _OneGroup:
    def __init__(self, member: _Member) -> None:
        self.member = member

    def has_group(self, group: str) -> bool:
        return True

    def group_members(self, group: str) -> list[_Member]:
        return [self.member]


async def test_a_failed_first_join_does_not_leave_the_groups_place_waiting_for_it() -> None:
    """The first local join of a history group makes frames wait for its position read; a
    join that failed before that read (closed, subscription refused) used to leave them
    waiting for good, while members already here got nothing (review of a9a16c6)."""
    from fastapi_channels.backends import MemoryBackend
    from fastapi_channels.recovery import HistoryGroups
    from fastapi_channels.stats import Counters

    member = _Member()
    groups = HistoryGroups(
        HistoryPolicy(["room"]),
        MemoryBackend(),
        _OneGroup(member),  # type: ignore[arg-type]
        Counters(),
        fast_path=lambda: False,
        on_lost=lambda _group: None,
        hold_limit=100,
    )
    groups.prepare("room")  # a first join begins
    groups.on_frame("room", 7, "e", "seven", frozenset())  # heard while its read would be out
    groups.drop_hold(member, "room")  # type: ignore[arg-type]  # the join failed
    groups.on_frame("room", 8, "e", "eight", frozenset())
    assert member.frames == ["seven", "eight"]
