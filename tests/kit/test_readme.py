"""The README's "Use it" code runs as written: its app answers over a socket."""

from __future__ import annotations

import re
import types
from pathlib import Path

from fastapi_channels.testing import Communicator

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_app() -> types.ModuleType:
    text = README.read_text()
    section = text[text.index("## Use it") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under 'Use it'"
    module = types.ModuleType("readme_app")
    exec(compile(match.group(1), str(README), "exec"), module.__dict__)
    return module


async def test_the_readme_app_serves_a_consumer() -> None:
    module = readme_app()
    async with Communicator(module.app, "/ws/alice") as alice:
        welcome = await alice.receive_json_from()
        assert welcome["type"] == "welcome" and welcome["channel_name"].startswith(
            module.manager.server_id + "!"
        )
        await alice.send_json_to({"type": "say", "data": "hello"})
        assert await alice.receive_json_from() == {"type": "said", "user": "alice", "text": "hello"}
    assert len(module.manager.registry) == 0


TESTING_MD = README.parent / "docs" / "testing.md"


async def test_the_testing_guides_communicator_example_passes_against_the_readme_app() -> None:
    """docs/testing.md's first example, run as written against the README's app (the only
    app the docs show that answers `say` with `said`)."""
    text = TESTING_MD.read_text()
    section = text[text.index("## Communicator") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under 'Communicator'"
    namespace = {"app": readme_app().app}
    exec(compile(match.group(1), str(TESTING_MD), "exec"), namespace)
    await namespace["test_chat_echoes"]()
