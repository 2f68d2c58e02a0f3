"""The peers a user would pick instead of fastapi-channels, each serving the benchmark protocol.

    socketio_app      python-socketio AsyncServer (Engine.IO 4 / Socket.IO 5 framing)
    django_app        Django Channels 4 (InMemoryChannelLayer or channels_redis RedisChannelLayer)
    broadcaster_app   encode/broadcaster on Starlette (memory or redis backend)

Each picks its backend from BACKEND_TYPE (`memory` or `redis`) and REDIS_URL /
REDIS_CHANNEL_PREFIX, as run.py sets them. They are an optional extra (`pip install
.[bench]`); run.py skips any whose packages are not importable.
"""
