"""The benchmark's wire protocol, shared by every system so each adapter stays one file.

`join` joins the group `bench`, `join <room>` a room of that name; both are answered with
`joined`. `P<payload>` sends the payload to every member of `bench`, `R<room> <payload>` to
every member of the room, `B<payload>` to every connection of the server (the capacity
workload's broadcast). Payloads are text and arrive verbatim. A client in two groups sends
two joins.
"""

from __future__ import annotations

GROUP = "bench"


def parse(text: str) -> tuple[str, str, str]:
    """(`join` | `publish` | `broadcast` | `unknown`, group, payload) for one client frame."""
    if text == "join":
        return "join", GROUP, ""
    if text.startswith("join "):
        return "join", text[5:], ""
    if text.startswith("P"):
        return "publish", GROUP, text[1:]
    if text.startswith("R"):
        room, _, payload = text[1:].partition(" ")
        return "publish", room, payload
    if text.startswith("B"):
        return "broadcast", "", text[1:]
    return "unknown", "", ""
