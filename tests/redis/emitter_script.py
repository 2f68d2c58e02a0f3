"""A plain script that reaches a cluster's clients with the blocking emitter.

`python -m tests.redis.emitter_script GROUP USER TEXT` sends TEXT to GROUP and to USER and
prints how many connections USER had. Settings come from the environment (BACKEND_TYPE=redis,
REDIS_URL, REDIS_CHANNEL_PREFIX), as in any deployment.
"""

from __future__ import annotations

import sys

from fastapi_channels import SyncEmitter


def main(group: str, user: str, text: str) -> None:
    with SyncEmitter() as emitter:
        emitter.send_to_group(group, {"type": "group", "data": text})
        print(emitter.send_to_user(user, {"type": "user", "data": text}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
