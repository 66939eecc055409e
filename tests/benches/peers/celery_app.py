"""The Celery side of the peers bench: one task that spawns the same shell worker as the
elves agent and the floor's responder, on the bench's own queue of the shared broker.

Configured by the bench through the environment: PEERS_BROKER (an amqp:// URL), PEERS_QUEUE
(the queue and exchange name) and PEERS_WORKER (the worker's path). Results come back over
the rpc:// backend (a reply queue per client, on the same broker).
"""

import base64
import os
import subprocess
import warnings

from celery import Celery

QUEUE = os.environ.get("PEERS_QUEUE", "peers.celery")
WORKER = os.environ.get("PEERS_WORKER", "")
PARAM = os.environ.get("PEERS_PARAM", "{}")
SUCCESS = "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>"

# The bench may run as root (a CI container); the worker then warns about it on every start.
warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")

app = Celery("peers", broker=os.environ.get("PEERS_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
             backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    # Nothing but the tasks on the broker: no remote control (pidbox) and no events exchange.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="peers.run")
def run():
    """Runs the worker as an elves agent does: `<entry> <app> <func> <base64(param)>`."""
    encoded = base64.b64encode(PARAM.encode()).decode()
    output = subprocess.run(
        [WORKER, "noop", "run", encoded],
        cwd=os.path.dirname(WORKER),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        check=True,
        timeout=60,
    ).stdout.decode()
    if SUCCESS not in output:
        raise RuntimeError(f"worker answered {output!r}")
    return "ok"
