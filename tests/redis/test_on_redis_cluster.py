"""The multi-server delivery contract and history, run again on a Redis Cluster.

Each test here is one of tests/redis/test_delivery_contract.py and test_history.py, imported
as it is and collected a second time with `topology` "cluster": its servers share the
session's three-master cluster (REDIS_MODE=cluster) instead of one Redis, and every assertion
stays. Left out: history tests whose subject is the replay itself (sizes, expiry, buffer
bounds), not where Redis keeps it, and tests that need a Redis of their own to kill, restart
or inspect. tests/redis/test_cluster.py runs on both by itself; test_cluster_mode.py has the
cluster's own cases and a shard failover.
"""

from __future__ import annotations

import pytest

from tests.redis.test_delivery_contract import (  # noqa: F401 - collected here again
    stop_inboxes,
    test_a_remote_join_for_a_dead_owner_ends_with_an_error,
    test_a_remote_join_has_happened_when_it_returns,
    test_a_remote_join_refused_by_the_owner_is_an_error_for_the_caller,
    test_a_send_then_a_personal_send_arrive_in_that_order,
    test_reconnecting_with_the_same_connection_id_keeps_cluster_counts_right,
    test_two_concurrent_connects_with_one_connection_id_register_exactly_one,
)
from tests.redis.test_history import (  # noqa: F401 - collected here again
    close_peers,
    test_a_client_that_left_gets_exactly_what_it_missed_then_live,
    test_history_pages_on_redis,
    test_replays_racing_live_traffic_on_two_servers,
    test_retention_by_size_on_redis,
    test_what_a_history_group_refuses_on_redis,
)


@pytest.fixture
def topology() -> str:
    return "cluster"
