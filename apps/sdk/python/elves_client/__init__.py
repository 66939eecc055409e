"""elves_client: the Python client of the elves center's v2 API.

    from elves_client import Client, ElvesError
    client = Client("http://127.0.0.1:8080", "admin", "key")
    client.rt_exec("10.0.0.7", "apptest", "helloword", param={"my": "hi"})

See ``Client`` for every endpoint, ``Client.queue`` for queues with dependencies,
``Client.wait_task`` / ``Queue.wait`` for results and ``Client.task_follow`` for live output.
"""

from .client import FINAL_QUEUE_STATUSES, FINAL_TASK_STATES, Client, Event
from .errors import (
    AgentNotFound,
    AgentUnreachable,
    AppNotFound,
    AuthError,
    AuthIdNotFound,
    BadRequest,
    BatchNotFound,
    BatchStateError,
    ComponentDisabled,
    CronNotFound,
    ElvesError,
    InternalError,
    NotFound,
    PackageRefused,
    PermissionDenied,
    QueueNotFound,
    QueueStateError,
    TaskNotFound,
    TransportError,
    error_for,
)
from .queue import Queue, QueueBuilder, TaskRef
from .signing import HMAC_SHA256, MD5, compute, sign_params, sign_string

__version__ = "0.1.0"
