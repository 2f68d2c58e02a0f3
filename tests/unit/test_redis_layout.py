"""The partitions of a cluster's key space (`redis_layout`): pure, no Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from fastapi_channels import WSConfig
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_layout import DEFAULT_PARTITIONS, MAX_PARTITIONS, Layout, partition_tags


def slot_of(prefix: str) -> int:
    return key_slot((prefix + "x").encode())


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 16, MAX_PARTITIONS])
@pytest.mark.parametrize("prefix", ["ws:", "test-1a2b:", "app.chat/", "Café:"])
def test_each_partition_has_a_slot_of_its_own_in_its_own_range(prefix: str, count: int) -> None:
    layout = Layout.cluster(prefix, count)
    assert len(layout) == count
    assert layout.home == "{" + prefix + "}"  # the home keeps the keys it always had
    slots = [slot_of(p) for p in layout.prefixes]
    span = REDIS_CLUSTER_HASH_SLOTS / count
    # One partition per range of slots: on a cluster sliced evenly over `count` masters, each
    # master holds one.
    assert sorted(int(slot // span) for slot in slots) == list(range(count))


def test_the_tags_depend_only_on_the_prefix_and_the_count() -> None:
    assert partition_tags("ws:", 3) == partition_tags("ws:", 3) == ("ws:", "ws:#1", "ws:#3")
    assert partition_tags("ws:", 3) != partition_tags("other:", 3)
    with pytest.raises(ValueError, match="partitions"):
        partition_tags("ws:", 0)
    with pytest.raises(ValueError, match="partitions"):
        partition_tags("ws:", MAX_PARTITIONS + 1)


def test_one_redis_has_one_partition_the_prefix_itself() -> None:
    layout = Layout.single("ws:")
    assert layout.prefixes == ("ws:",)
    assert {layout.of_topic(t) for t in ("group:a", "group:b", "user:u", "inbox:s", "broadcast")} == {0}


@given(st.text(min_size=1, max_size=40))
def test_a_group_and_every_key_of_it_live_in_one_partition(group: str) -> None:
    layout = Layout.cluster("ws:", 5)
    index = layout.of_group(group)
    assert layout.of_topic("group:" + group) == index
    keys = RedisKeys(layout.prefixes[index], "server-1")
    names = [
        keys.group(group),
        keys.group_servers(group),
        keys.history(group),
        keys.history_position(group),
        keys.channel("group:" + group),
        keys.epoch,
        keys.servers,
        keys.groups,
        keys.members,
    ]
    assert {key_slot(name.encode()) for name in names} == {slot_of(layout.prefixes[index])}


def test_users_inboxes_and_broadcast_stay_at_home_and_groups_spread() -> None:
    layout = Layout.cluster("ws:", 3)
    assert {layout.of_topic(t) for t in ("user:alice", "inbox:server-1", "broadcast")} == {0}
    spread = [0] * 3
    for index in range(3000):
        spread[layout.of_group(f"room-{index}")] += 1
    assert min(spread) > 900, spread  # about a third each


def test_the_setting_and_its_bounds_agree_with_the_layout() -> None:
    assert WSConfig().REDIS_CLUSTER_PARTITIONS == DEFAULT_PARTITIONS
    assert WSConfig(REDIS_CLUSTER_PARTITIONS=MAX_PARTITIONS).REDIS_CLUSTER_PARTITIONS == MAX_PARTITIONS
    for wrong in (0, MAX_PARTITIONS + 1):
        with pytest.raises(ValidationError, match="REDIS_CLUSTER_PARTITIONS"):
            WSConfig(REDIS_CLUSTER_PARTITIONS=wrong)
