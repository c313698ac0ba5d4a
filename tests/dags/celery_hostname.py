"""``[core] hostname_callable`` for the Celery test: each worker reports its own name.

Both test workers run on one machine, so the real hostname would not tell them apart
in the task instances' ``hostname`` column.
"""

import os
import socket


def worker_name() -> str:
    return os.environ.get("FACES_TEST_WORKER_NAME") or socket.getfqdn()
