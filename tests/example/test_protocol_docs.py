"""docs/protocol.md is generated from the pydantic models, and every documented example is valid."""

from __future__ import annotations

from example import protocol_docs
from example.protocol import CLIENT_MESSAGES, SERVER_FRAMES


def test_committed_protocol_doc_matches_the_generator() -> None:
    committed = protocol_docs.DOC_PATH.read_text(encoding="utf-8")
    assert committed == protocol_docs.render(), (
        "docs/protocol.md is stale: run `python -m example.protocol_docs --write`"
    )


def test_every_message_is_documented_with_a_valid_example() -> None:
    text = protocol_docs.render()
    for kind, model in CLIENT_MESSAGES.items():
        assert f"### `{kind}`" in text
        examples = protocol_docs.examples_of(model)
        assert examples, kind
        for example in examples:
            model.model_validate(example)
    for kind, frame_model in SERVER_FRAMES.items():
        assert f"### `{kind}`" in text
        examples = protocol_docs.examples_of(frame_model)
        assert examples, kind
        for example in examples:
            assert frame_model.model_validate(example).type == kind
