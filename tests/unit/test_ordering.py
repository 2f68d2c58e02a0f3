"""EchoBarrier: local frames wait behind this server's cluster sends still on their way back."""

from __future__ import annotations

from fastapi_channels.ordering import EchoBarrier


def test_nothing_outstanding_means_deliver_now() -> None:
    barrier = EchoBarrier()
    assert barrier.defer(lambda: None) is False
    assert barrier.idle and barrier.waiting == 0


def test_a_local_frame_waits_for_every_echo_issued_before_it() -> None:
    barrier = EchoBarrier()
    seen: list[str] = []
    first = barrier.issue("group:a", now=0.0)
    second = barrier.issue("group:b", now=0.0)
    assert barrier.defer(lambda: seen.append("local-1"))
    third = barrier.issue("group:a", now=0.0)  # issued after local-1: does not hold it back
    assert barrier.defer(lambda: seen.append("local-2"))
    barrier.echoed(second)
    assert seen == []
    barrier.echoed(first)
    assert seen == ["local-1"]
    barrier.echoed(third)
    assert seen == ["local-1", "local-2"]
    assert barrier.idle and barrier.waiting == 0


def test_frames_are_released_in_the_order_they_were_deferred() -> None:
    barrier = EchoBarrier()
    seen: list[int] = []
    seq = barrier.issue("user:u", now=0.0)
    for index in range(5):
        barrier.defer(lambda index=index: seen.append(index))
    barrier.echoed(seq)
    assert seen == [0, 1, 2, 3, 4]


def test_a_dropped_topic_or_a_lost_reader_releases_what_waits() -> None:
    barrier = EchoBarrier()
    seen: list[str] = []
    barrier.issue("group:gone", now=0.0)
    barrier.defer(lambda: seen.append("a"))
    barrier.forget_topic("group:gone")
    assert seen == ["a"]
    barrier.issue("group:x", now=0.0)
    barrier.defer(lambda: seen.append("b"))
    barrier.forget_all()
    assert seen == ["a", "b"]


def test_an_echo_that_never_comes_is_given_up_after_max_wait() -> None:
    barrier = EchoBarrier(max_wait=5.0)
    seen: list[str] = []
    barrier.issue("group:x", now=100.0)
    barrier.defer(lambda: seen.append("late"))
    barrier.expire(now=104.9)
    assert seen == []
    barrier.expire(now=105.0)
    assert seen == ["late"] and barrier.given_up == 1


def test_a_cancelled_send_holds_nothing_back() -> None:
    barrier = EchoBarrier()
    seen: list[str] = []
    seq = barrier.issue("broadcast", now=0.0)
    barrier.defer(lambda: seen.append("x"))
    barrier.cancel(seq)
    assert seen == ["x"]


def test_bounded_outstanding_echoes() -> None:
    barrier = EchoBarrier(limit=3)
    seen: list[str] = []
    barrier.issue("group:x", now=0.0)
    barrier.defer(lambda: seen.append("first"))
    for _ in range(3):
        barrier.issue("group:x", now=0.0)  # the fourth outstanding one pushes the oldest out
    assert seen == ["first"] and barrier.given_up == 1


def test_a_failing_delivery_does_not_stop_the_others() -> None:
    barrier = EchoBarrier()
    seen: list[str] = []
    seq = barrier.issue("group:x", now=0.0)

    def boom() -> None:
        raise RuntimeError("socket gone")

    barrier.defer(boom)
    barrier.defer(lambda: seen.append("after"))
    barrier.echoed(seq)
    assert seen == ["after"]
