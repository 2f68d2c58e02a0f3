"""A Celery app whose tasks reach the clients of a fastapi-channels cluster through a SyncEmitter.

Run by tests/redis/test_emitter_workers.py as a real worker:
`celery -A tests.redis.celery_tasks worker`, with the cluster's settings in the environment
(BACKEND_TYPE=redis, REDIS_URL, REDIS_CHANNEL_PREFIX) and CELERY_BROKER_URL /
CELERY_RESULT_BACKEND naming the broker and result backend.
"""

from __future__ import annotations

import os

from celery import Celery

from fastapi_channels import SyncEmitter

app = Celery(
    "fastapi_channels_test",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

# Made at import, before the prefork pool forks its child: redis-py's pool notices the new
# process id and opens its own connections there.
emitter = SyncEmitter()


@app.task(name="notify_group")
def notify_group(group: str, text: str) -> int:
    emitter.send_to_group(group, {"type": "group", "data": text})
    return os.getpid()


@app.task(name="notify_user")
def notify_user(user: str, text: str) -> int:
    return emitter.send_to_user(user, {"type": "user", "data": text})
