"""`from fastapi_channels.typed import Message`: the import path of the original system's example.

A re-export: the class lives in `fastapi_channels.messages` (also `fastapi_channels.Message`).
"""

from fastapi_channels.messages import Message

__all__ = ["Message"]
