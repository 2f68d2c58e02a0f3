"""The chat example of fastapi-channels: rooms, history in SQLite, private messages, files, REST.

Run it with ``uvicorn example.main:app --host 127.0.0.1 --port 8000 --ws websockets-sansio``
(in-memory backend, no Redis needed). See example/README.md and docs/protocol.md.
"""
