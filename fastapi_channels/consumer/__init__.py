"""Consumers: the application's handler for one connection.

`BaseConsumer` lives in `fastapi_channels.consumer.base` (the path the original system's
example imports it from); `from fastapi_channels.consumer import BaseConsumer` and
`from fastapi_channels import BaseConsumer` name the same class.
"""

from fastapi_channels.consumer.base import BaseConsumer

__all__ = ["BaseConsumer"]
