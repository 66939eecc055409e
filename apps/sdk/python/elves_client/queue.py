"""Queue building: tasks with dependencies, sent with ``queue/addtasks`` and committed.

    builder = client.queue("apptest")
    fetch = builder.add("10.0.0.7", "fetch", param={"url": "..."})
    builder.add("10.0.0.8", "install", after=fetch)      # runs once fetch finished with 1
    queue = builder.submit()                               # create, addtasks, commit
    results = queue.wait(timeout_s=600)                    # {task_id: {...status: finish...}}
"""

# One addtasks call takes at most this many tasks (the center's MAX_BATCH_TASKS).
MAX_TASKS_PER_CALL = 10000


class TaskRef:
    """A task added to a ``QueueBuilder``: pass it as ``after=`` to depend on it. After
    ``submit()``, ``id`` is the task's id."""

    __slots__ = ("index", "id")

    def __init__(self, index):
        self.index = index
        self.id = None

    def __repr__(self):
        return "TaskRef(index=%d, id=%r)" % (self.index, self.id)


class QueueBuilder:
    def __init__(self, client, app, max_tasks_per_call=MAX_TASKS_PER_CALL):
        if max_tasks_per_call < 1:
            raise ValueError("max_tasks_per_call must be at least 1")
        self.client = client
        self.app = app
        self.max_tasks_per_call = max_tasks_per_call
        self._tasks = []
        self._after = []
        self._refs = []

    def add(self, ip, func, param=None, timeout=None, proxy=None, mode=None, after=None):
        """Adds a task for agent ``ip``. ``after``: a ``TaskRef`` of this builder, or the id of
        a task already in the queue; the task runs only once that one finished with
        worker_flag 1, and is skipped when it failed."""
        if isinstance(after, TaskRef):
            if after.index >= len(self._refs) or self._refs[after.index] is not after:
                raise ValueError("after must be a task added earlier to this builder")
        elif after is not None and not isinstance(after, str):
            raise TypeError("after must be a TaskRef or a task id")
        task = {"ip": ip, "func": func}
        for key, value in (("param", param), ("timeout", timeout), ("proxy", proxy),
                           ("mode", mode)):
            if value is not None:
                task[key] = value
        ref = TaskRef(len(self._refs))
        self._tasks.append(task)
        self._after.append(after)
        self._refs.append(ref)
        return ref

    def __len__(self):
        return len(self._tasks)

    def submit(self, commit=True):
        """Creates the queue, adds the tasks (in calls of at most ``max_tasks_per_call``) and
        commits it unless ``commit=False``. Answers the ``Queue``."""
        if not self._tasks:
            raise ValueError("a queue needs at least one task")
        queue_id = self.client.queue_create(self.app)
        ids = []
        for start in range(0, len(self._tasks), self.max_tasks_per_call):
            chunk = []
            for index in range(start, min(start + self.max_tasks_per_call, len(self._tasks))):
                task = dict(self._tasks[index])
                after = self._after[index]
                if isinstance(after, TaskRef):
                    if after.index >= start:
                        task["depends_on_index"] = after.index - start
                    else:
                        # Sent by an earlier call: its id is known.
                        task["depend_task_id"] = ids[after.index]
                elif after is not None:
                    task["depend_task_id"] = after
                chunk.append(task)
            ids.extend(self.client.queue_addtasks(queue_id, chunk))
        for ref, task_id in zip(self._refs, ids):
            ref.id = task_id
        queue = Queue(self.client, queue_id, ids)
        if commit:
            queue.commit()
        return queue


class Queue:
    """A queue on the center: its id and its tasks' ids in the order they were added."""

    def __init__(self, client, queue_id, task_ids):
        self.client = client
        self.id = queue_id
        self.task_ids = list(task_ids)

    def commit(self):
        return self.client.queue_commit(self.id)

    def stop(self):
        return self.client.queue_stop(self.id)

    def result(self):
        return self.client.queue_result(self.id)

    def wait(self, timeout_s=300.0, poll_s=0.2):
        """Waits until every task is final (finish, stoped or skipped); answers the results."""
        return self.client.wait_queue(self.id, timeout_s=timeout_s, poll_s=poll_s)
