"""The v2 API client: one method per endpoint, signed calls, typed errors, waiting and following.

Standard library only. Every call is a form POST of the signed parameters (SPEC §8 accepts GET
and POST alike); the answer's envelope ``{flag, error, result}`` becomes the result, or an
``ElvesError`` subclass carrying the code.
"""

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import signing
from .errors import ElvesError, TransportError, error_for
from .queue import QueueBuilder

# Task states (task/result, SPEC §12) after which nothing changes any more.
FINAL_TASK_STATES = ("finished", "stopped", "skipped")
# Queue task statuses (queue/result, SPEC §8) after which nothing changes any more.
FINAL_QUEUE_STATUSES = ("finish", "stoped", "skipped")


class Event:
    """One server-sent event of ``task/follow``: ``name`` (chunk, end or error), ``id`` (the
    offset to resume from) and ``data`` (decoded JSON)."""

    __slots__ = ("name", "id", "data")

    def __init__(self, name, event_id, data):
        self.name = name
        self.id = event_id
        self.data = data

    def __repr__(self):
        return "Event(%r, %r, %r)" % (self.name, self.id, self.data)


def _text(value):
    """A parameter's text: JSON for dicts and lists, lowercase for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _pairs(params):
    """(key, text) pairs of the parameters that are given (None means: not sent)."""
    return [(key, _text(value)) for key, value in params.items() if value is not None]


class Client:
    """A client of one center, signing as one auth id.

    ``Client.from_env()`` reads the variables the ``elves`` command uses: ``ELVES_URL``,
    ``ELVES_AUTH_ID``, ``ELVES_AUTH_KEY`` (and ``ELVES_SIGN_TYPE``, default HMAC-SHA256).
    """

    # Every v2 route and the method that calls it (the tests hold this against the center's
    # OpenAPI document, so that a new route cannot be missed here).
    ENDPOINTS = {
        "/api/v2/rt/exec": "rt_exec",
        "/api/v2/agent/enroll": "agent_enroll",
        "/api/v2/agent/revoke": "agent_revoke",
        "/api/v2/keys/list": "keys_list",
        "/api/v2/keys/add": "keys_add",
        "/api/v2/keys/use": "keys_use",
        "/api/v2/keys/retire": "keys_retire",
        "/api/v2/queue/create": "queue_create",
        "/api/v2/queue/addtask": "queue_addtask",
        "/api/v2/queue/addtasks": "queue_addtasks",
        "/api/v2/queue/commit": "queue_commit",
        "/api/v2/queue/stop": "queue_stop",
        "/api/v2/queue/result": "queue_result",
        "/api/v2/queue/qksqueue": "qksqueue",
        "/api/v2/task/output": "task_output",
        "/api/v2/task/follow": "task_follow",
        "/api/v2/task/result": "task_result",
        "/api/v2/cron/add": "cron_add",
        "/api/v2/cron/start": "cron_start",
        "/api/v2/cron/stop": "cron_stop",
        "/api/v2/cron/delete": "cron_delete",
        "/api/v2/cron/detail": "cron_detail",
        "/api/v2/cron/info": "cron_info",
        "/api/v2/cron/list": "cron_list",
        "/api/v2/cron/reload": "cron_reload",
        "/api/v2/info/agents/detail": "agent_detail",
        "/api/v2/info/apps": "info_apps",
        "/api/v2/info/app": "info_app",
        "/api/v2/info/agents": "info_agents",
        "/api/v2/app/upload": "app_upload",
        "/api/v2/app/create": "app_create",
        "/api/v2/app/online": "app_online",
        "/api/v2/app/versions": "app_versions",
        "/api/v2/app/list": "app_list",
        "/api/v2/app/bind": "app_bind",
        "/api/v2/app/unbind": "app_unbind",
        "/api/v2/app/download/{sha256}": "app_download",
        "/api/v2/auth/create": "auth_create",
        "/api/v2/auth/list": "auth_list",
        "/api/v2/auth/revoke": "auth_revoke",
        "/api/v2/auth/grant": "auth_grant",
        "/api/v2/auth/ungrant": "auth_ungrant",
        "/api/v2/target/resolve": "target_resolve",
        "/api/v2/batch/create": "batch_create",
        "/api/v2/batch/status": "batch_status",
        "/api/v2/batch/result": "batch_result",
        "/api/v2/batch/stop": "batch_stop",
        "/api/v2/batch/retry": "batch_retry",
        "/api/v2/inventory/reload": "inventory_reload",
        "/api/v2/openapi.json": "openapi",
        "/healthz": "healthz",
        "/metrics": "metrics",
    }

    def __init__(self, url, auth_id, auth_key, sign_type=signing.HMAC_SHA256, timeout_s=120.0):
        self.url = url.rstrip("/")
        self.auth_id = auth_id
        self.auth_key = auth_key
        self.sign_type = signing.normalize_sign_type(sign_type)
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls, environ=None):
        environ = os.environ if environ is None else environ
        missing = [name for name in ("ELVES_URL", "ELVES_AUTH_ID", "ELVES_AUTH_KEY")
                   if not environ.get(name)]
        if missing:
            raise ValueError("set %s" % ", ".join(missing))
        return cls(environ["ELVES_URL"], environ["ELVES_AUTH_ID"], environ["ELVES_AUTH_KEY"],
                   environ.get("ELVES_SIGN_TYPE", signing.HMAC_SHA256))

    # ---- the transport ------------------------------------------------------------------------

    def signed_pairs(self, path, params):
        """The parameters of a call to ``path``, with auth_id, timestamp and the sign added."""
        pairs = _pairs(params) + [("auth_id", self.auth_id),
                                  ("timestamp", str(int(time.time())))]
        return signing.sign_params(path, pairs, self.sign_type, self.auth_key)

    def _open(self, request, timeout_s):
        try:
            return urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", "replace")
            raise TransportError("%s: HTTP %s: %s" % (request.full_url, err.code, body[:500]))
        except (urllib.error.URLError, OSError) as err:
            raise TransportError("%s: %s" % (request.full_url, err))

    def _post(self, path, pairs, timeout_s=None, headers=None):
        body = urllib.parse.urlencode(pairs).encode("ascii")
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        return self._open(request, timeout_s or self.timeout_s)

    @staticmethod
    def _result(endpoint, response):
        text = response.read().decode("utf-8", "replace")
        try:
            envelope = json.loads(text)
        except ValueError:
            raise TransportError("%s: the answer is not JSON: %s" % (endpoint, text[:500]))
        if not isinstance(envelope, dict) or "flag" not in envelope:
            raise TransportError("%s: the answer is not the v2 envelope: %s" % (endpoint, text[:500]))
        if envelope.get("flag") != "true":
            raise error_for(envelope.get("error", ""), endpoint)
        return envelope.get("result")

    def call(self, endpoint, timeout_s=None, **params):
        """Calls ``/api/v2/<endpoint>`` with ``params`` (None values are left out) and returns
        its result; a refusal raises the ``ElvesError`` of its code."""
        endpoint = endpoint.strip("/")
        if endpoint.startswith("api/v2/"):
            endpoint = endpoint[len("api/v2/"):]
        path = "/api/v2/" + endpoint
        pairs = self.signed_pairs(path, params)
        with self._post(path, pairs, timeout_s) as response:
            return self._result(endpoint, response)

    def _get(self, path, query=None, timeout_s=None):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        return self._open(urllib.request.Request(url, method="GET"), timeout_s or self.timeout_s)

    # ---- rt -------------------------------------------------------------------------------------

    def rt_exec(self, ip, app, func, param=None, timeout=None, proxy=None, mode=None,
                wait_s=None):
        """Runs ``func`` of ``app`` on the agent ``ip`` (its ip or id). Answers
        ``{id, worker_flag, worker_message, worker_costtime}``, or ``{id, state: "running"}``
        when ``wait_s`` ran out first (then see ``wait_task`` and ``task_follow``)."""
        # The HTTP wait must outlast the task's own timeout (default 90 s) and its kill grace.
        try:
            waited_s = float(wait_s or timeout or 90)
        except (TypeError, ValueError):
            waited_s = 90.0  # the center refuses such a value (403.8) at once
        http_timeout = max(self.timeout_s, waited_s + 30.0)
        return self.call("rt/exec", timeout_s=http_timeout, ip=ip, app=app, func=func,
                         param=param, timeout=timeout, proxy=proxy, mode=mode, wait_s=wait_s)

    # ---- queues ---------------------------------------------------------------------------------

    def queue_create(self, app):
        return self.call("queue/create", app=app)["id"]

    def queue_addtask(self, queue_id, ip, func, param=None, timeout=None, proxy=None, mode=None,
                      depend_task_id=None):
        return self.call("queue/addtask", queue_id=queue_id, ip=ip, func=func, param=param,
                         timeout=timeout, proxy=proxy, mode=mode,
                         depend_task_id=depend_task_id)["id"]

    def queue_addtasks(self, queue_id, tasks):
        """Adds ``tasks`` (dicts with ip, func and optionally param, timeout, proxy, mode, app,
        depend_task_id or depends_on_index) in one transaction; answers their ids in order."""
        return self.call("queue/addtasks", queue_id=queue_id, tasks=list(tasks))["ids"]

    def queue_commit(self, queue_id):
        return self.call("queue/commit", queue_id=queue_id)

    def queue_stop(self, queue_id):
        """Stops the queue; answers ``{task_id: status}`` after the stop."""
        return self.call("queue/stop", queue_id=queue_id)

    def queue_result(self, queue_id):
        """``{task_id: {id, status, depend_task_id, flag, error, worker_flag, ...}}``."""
        return self.call("queue/result", queue_id=queue_id)

    def qksqueue(self, ip, app, func, param=None, timeout=None, proxy=None, mode=None):
        """A one-task queue, committed at once: ``{id, task_id}``."""
        return self.call("queue/qksqueue", ip=ip, app=app, func=func, param=param,
                         timeout=timeout, proxy=proxy, mode=mode)

    def queue(self, app):
        """A ``QueueBuilder``: add tasks (with dependencies), then ``submit()``."""
        return QueueBuilder(self, app)

    def wait_queue(self, queue_id, timeout_s=300.0, poll_s=0.2):
        """Polls ``queue/result`` until every task is final; answers the last result.
        ``TimeoutError`` when that takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.queue_result(queue_id)
            if result and all(task.get("status") in FINAL_QUEUE_STATUSES
                              for task in result.values()):
                return result
            if time.monotonic() >= deadline:
                pending = {tid: task.get("status") for tid, task in result.items()
                           if task.get("status") not in FINAL_QUEUE_STATUSES}
                raise TimeoutError("queue %s not done after %s s: %s"
                                   % (queue_id, timeout_s, pending))
            time.sleep(poll_s)

    # ---- tasks: results and live output ---------------------------------------------------------

    def task_result(self, task_id):
        """``{id, state, flag, error, worker_flag, worker_message, worker_costtime, truncated}``."""
        return self.call("task/result", id=task_id)

    def task_output(self, task_id, stream=None, offset=None):
        """One read of a task's output: ``{offset, data, next, ended, truncated}``."""
        return self.call("task/output", id=task_id, stream=stream, offset=offset)

    def wait_task(self, task_id, timeout_s=300.0, poll_s=0.2):
        """Polls ``task/result`` until the task is finished, stopped or skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.task_result(task_id)
            if result.get("state") in FINAL_TASK_STATES:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError("task %s still %s after %s s"
                                   % (task_id, result.get("state"), timeout_s))
            time.sleep(poll_s)

    def task_follow(self, task_id, stream=None, offset=None, reconnects=3):
        """Yields the ``task/follow`` events of a task as they come: ``chunk`` events
        (``data``: ``{offset, data}``) and, last, the ``end`` event (``{state, worker_flag,
        worker_costtime, truncated}``). A dropped connection is resumed from the last event
        id, up to ``reconnects`` times in a row; an ``error`` event raises its ``ElvesError``."""
        resume_from = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if resume_from is not None:
                headers["Last-Event-ID"] = str(resume_from)
            pairs = self.signed_pairs("/api/v2/task/follow",
                                      {"id": task_id, "stream": stream, "offset": offset})
            try:
                response = self._post("/api/v2/task/follow", pairs, headers=headers)
            except TransportError:
                failures += 1
                if failures > reconnects:
                    raise
                time.sleep(0.2 * failures)
                continue
            with response:
                if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                    # A refused call answers the envelope instead of a stream.
                    self._result("task/follow", response)
                    raise TransportError("task/follow: neither events nor a refusal")
                try:
                    for event in _events(response):
                        failures = 0
                        resume_from = event.id
                        if event.name == "error":
                            raise error_for(event.data.get("error", ""), "task/follow")
                        yield event
                        if event.name == "end":
                            return
                except (OSError, ValueError, http.client.HTTPException) as err:
                    failures += 1
                    if failures > reconnects:
                        raise TransportError("task/follow: %s" % err)
                    continue
            # The stream closed without an end event: resume after what was seen.
            failures += 1
            if failures > reconnects:
                raise TransportError("task/follow: the stream ended without an end event")

    def follow_output(self, task_id, stream=None, on_chunk=None):
        """Follows a task to its end; answers ``(text, end)``: all its output and the ``end``
        event's data. ``on_chunk(text)`` sees each chunk as it arrives."""
        parts = []
        for event in self.task_follow(task_id, stream=stream):
            if event.name == "chunk":
                text = event.data.get("data", "")
                parts.append(text)
                if on_chunk is not None:
                    on_chunk(text)
            elif event.name == "end":
                return "".join(parts), event.data
        raise TransportError("task/follow: no end event")

    # ---- crons ----------------------------------------------------------------------------------

    def cron_add(self, ip, app, func, rule, param=None, timeout=None, proxy=None, mode=None):
        return self.call("cron/add", ip=ip, app=app, func=func, rule=rule, param=param,
                         timeout=timeout, proxy=proxy, mode=mode)["id"]

    def cron_start(self, cron_id):
        return self.call("cron/start", cron_id=cron_id)

    def cron_stop(self, cron_id):
        return self.call("cron/stop", cron_id=cron_id)

    def cron_delete(self, cron_id):
        return self.call("cron/delete", cron_id=cron_id)

    def cron_detail(self, cron_id):
        return self.call("cron/detail", cron_id=cron_id)

    def cron_info(self, cron_id):
        """Alias of ``cron_detail`` (route ``cron/info``)."""
        return self.call("cron/info", cron_id=cron_id)

    def cron_list(self, ip=None):
        return self.call("cron/list", ip=ip)

    def cron_reload(self):
        return self.call("cron/reload")

    # ---- info -----------------------------------------------------------------------------------

    def info_apps(self):
        return self.call("info/apps")

    def info_app(self):
        """Alias of ``info_apps`` (route ``info/app``)."""
        return self.call("info/app")

    def info_agents(self, page=None, page_size=None):
        return self.call("info/agents", page=page, page_size=page_size)

    def agent_detail(self, ip, showcron=None):
        return self.call("info/agents/detail", ip=ip, showcron=showcron)

    # ---- apps (admin) ---------------------------------------------------------------------------

    def app_upload(self, package, filename=None, sha256=None, online=None):
        """Uploads a package ``<app>_<version>.zip``: ``package`` is a path or bytes (then
        ``filename`` names it). Answers ``{app, version, sha256, size}``."""
        if isinstance(package, (bytes, bytearray)):
            data = bytes(package)
            if not filename:
                raise ValueError("filename is needed with bytes")
        else:
            with open(package, "rb") as file:
                data = file.read()
            filename = filename or os.path.basename(package)
        path = "/api/v2/app/upload"
        # The auth parameters go in the query string; the body is not signed (SPEC §11).
        query = urllib.parse.urlencode(
            self.signed_pairs(path, {"sha256": sha256, "online": online}))
        boundary = "elves-" + uuid.uuid4().hex
        body = b"".join([
            ("--%s\r\n" % boundary).encode("ascii"),
            ('Content-Disposition: form-data; name="file"; filename="%s"\r\n' % filename)
            .encode("utf-8"),
            b"Content-Type: application/zip\r\n\r\n",
            data,
            ("\r\n--%s--\r\n" % boundary).encode("ascii"),
        ])
        request = urllib.request.Request("%s%s?%s" % (self.url, path, query), data=body,
                                         method="POST")
        request.add_header("Content-Type", "multipart/form-data; boundary=%s" % boundary)
        with self._open(request, self.timeout_s) as response:
            return self._result("app/upload", response)

    def app_create(self, app, name=None):
        return self.call("app/create", app=app, name=name)

    def app_online(self, app, version):
        return self.call("app/online", app=app, version=version)

    def app_versions(self, app):
        return self.call("app/versions", app=app)

    def app_list(self):
        return self.call("app/list")

    def app_bind(self, app, ip):
        return self.call("app/bind", app=app, ip=ip)

    def app_unbind(self, app, ip):
        return self.call("app/unbind", app=app, ip=ip)

    def app_download(self, sha256, agent, expires, token):
        """A package's bytes by the link the center gave an agent (not signed: the token is)."""
        query = {"agent": agent, "expires": expires, "token": token}
        with self._get("/api/v2/app/download/%s" % urllib.parse.quote(sha256), query) as response:
            return response.read()

    # ---- auth ids (admin, supervisor mode) ------------------------------------------------------

    def auth_create(self, id, role=None, comment=None, apps=None):
        """Answers ``{auth_id, auth_key, role}``; ``apps`` is a list or a comma-separated text."""
        if isinstance(apps, (list, tuple)):
            apps = ",".join(apps)
        return self.call("auth/create", id=id, role=role, comment=comment, apps=apps)

    def auth_list(self):
        return self.call("auth/list")

    def auth_revoke(self, id):
        return self.call("auth/revoke", id=id)

    def auth_grant(self, id, app):
        return self.call("auth/grant", id=id, app=app)

    def auth_ungrant(self, id, app):
        return self.call("auth/ungrant", id=id, app=app)

    # ---- agents' broker accounts and the center's keys (admin) --------------------------------

    def agent_enroll(self, id):
        """Answers ``{agent_id, bus_url, namespace, center_keys, config}``: ``config`` is the
        agent's whole ``agent.toml``, its password shown this once."""
        return self.call("agent/enroll", id=id)

    def agent_revoke(self, id):
        return self.call("agent/revoke", id=id)

    def keys_list(self):
        return self.call("keys/list")

    def keys_add(self, id):
        return self.call("keys/add", id=id)

    def keys_use(self, id):
        return self.call("keys/use", id=id)

    def keys_retire(self, id):
        return self.call("keys/retire", id=id)

    # ---- targets and batches (SPEC §12) ---------------------------------------------------------

    def target_resolve(self, target, page=None, page_size=None):
        return self.call("target/resolve", target=target, page=page, page_size=page_size)

    def batch_create(self, app, func, target, param=None, timeout=None, proxy=None, mode=None,
                     size=None, window=None, max_fail=None, wait_s=None, offline=None):
        return self.call("batch/create", app=app, func=func, target=target, param=param,
                         timeout=timeout, proxy=proxy, mode=mode, size=size, window=window,
                         max_fail=max_fail, wait_s=wait_s, offline=offline)

    def batch_status(self, id):
        return self.call("batch/status", id=id)

    def batch_result(self, id, state=None, page=None, page_size=None):
        return self.call("batch/result", id=id, state=state, page=page, page_size=page_size)

    def batch_stop(self, id):
        return self.call("batch/stop", id=id)

    def batch_retry(self, id, states=None):
        return self.call("batch/retry", id=id, states=states)

    def inventory_reload(self):
        return self.call("inventory/reload")

    # ---- unsigned ops endpoints -----------------------------------------------------------------

    def openapi(self):
        """The center's OpenAPI document of this API."""
        with self._get("/api/v2/openapi.json") as response:
            return json.loads(response.read().decode("utf-8"))

    def healthz(self):
        with self._get("/healthz") as response:
            return json.loads(response.read().decode("utf-8"))

    def metrics(self):
        with self._get("/metrics") as response:
            return response.read().decode("utf-8")


def _events(response):
    """Parses a text/event-stream into ``Event``s (comments such as keepalives are skipped)."""
    name, event_id, data = "message", None, []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, event_id, json.loads("\n".join(data)))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "id":
            event_id = int(value) if value.isdigit() else value
        elif field == "data":
            data.append(value)


__all__ = ["Client", "Event", "ElvesError", "FINAL_TASK_STATES", "FINAL_QUEUE_STATUSES"]
