"""framing: a frame's size tells its payload's, for every length form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastapi_channels.framing import encode_frame, payload_size

BOUNDARIES = [0, 1, 124, 125, 126, 127, 65_534, 65_535, 65_536, 65_537, 200_000]


def test_the_payload_size_of_a_frame_at_each_length_boundary() -> None:
    for length in BOUNDARIES:
        assert payload_size(len(encode_frame(b"b" * length))) == length, length
        assert payload_size(len(encode_frame("t" * length))) == length, length


@given(st.text(max_size=300))
def test_a_text_frames_payload_is_its_utf8_size(text: str) -> None:
    assert payload_size(len(encode_frame(text))) == len(text.encode())


@given(st.integers(min_value=0, max_value=70_000))
def test_a_binary_frames_payload_is_its_size(length: int) -> None:
    assert payload_size(len(encode_frame(bytes(length)))) == length
