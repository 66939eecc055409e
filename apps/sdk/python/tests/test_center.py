"""The SDK against a running center with one agent that has the test apps (`apptest`,
`elvestest`). The Rust integration test `python_sdk` starts them and sets:

    ELVES_URL, ELVES_AUTH_ID, ELVES_AUTH_KEY   the center and a simple-mode auth id
    ELVES_TEST_AGENT                           the agent's ip
"""

import hashlib
import http.client
import io
import os
import sys
import time
import unittest
import zipfile
from unittest import mock

import elves_client
from elves_client import (
    AgentNotFound,
    AuthError,
    BadRequest,
    Client,
    ElvesError,
    PackageRefused,
    QueueNotFound,
    QueueStateError,
    TaskNotFound,
)


def _app_zip(reply):
    """A package whose only file is an executable app-worker answering ``reply``."""
    script = ("#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>%s</ElvesWResult>'\n"
              % reply)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        entry = zipfile.ZipInfo("app-worker")
        entry.external_attr = 0o100755 << 16
        package.writestr(entry, script)
    return buffer.getvalue()


def _environment():
    missing = [name for name in ("ELVES_URL", "ELVES_AUTH_ID", "ELVES_AUTH_KEY",
                                 "ELVES_TEST_AGENT") if not os.environ.get(name)]
    if missing:
        raise RuntimeError("these tests need a running center: set %s (the Rust test "
                           "python_sdk does)" % ", ".join(missing))
    return os.environ["ELVES_TEST_AGENT"]


class CenterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.agent = _environment()
        cls.client = Client.from_env()

    def test_the_package_is_the_installed_one(self):
        # Run from outside the source tree, the import comes from the installed package.
        self.assertTrue(os.path.realpath(elves_client.__file__).startswith(
            os.path.realpath(sys.prefix)), (elves_client.__file__, sys.prefix))

    def test_rt_call_signed_both_ways(self):
        for sign_type in ("HMAC-SHA256", "MD5"):
            client = Client(self.client.url, self.client.auth_id, self.client.auth_key,
                            sign_type=sign_type)
            result = client.rt_exec(self.agent, "apptest", "helloword",
                                    param={"my": "hello from %s" % sign_type})
            self.assertEqual(result["worker_flag"], "1", result)
            self.assertEqual(result["worker_message"], "hello from %s" % sign_type)
            self.assertEqual(len(result["id"]), 16)
            self.assertIsInstance(result["worker_costtime"], int)

    def test_queue_with_dependencies_waited_to_the_end(self):
        # Two tasks per addtasks call: dependencies inside a call go by index, those on a task
        # of an earlier call by its id; both must hold.
        builder = self.client.queue("elvestest")
        builder.max_tasks_per_call = 2
        first = builder.add(self.agent, "ok")
        failing = builder.add(self.agent, "false", after=first)
        skipped = builder.add(self.agent, "ok", after=failing)
        echoed = builder.add(self.agent, "echo", param={"after": "first"}, after=first)
        queue = builder.submit()
        self.assertEqual(queue.task_ids, [first.id, failing.id, skipped.id, echoed.id])
        results = queue.wait(timeout_s=60)
        self.assertEqual(set(results), set(queue.task_ids))
        self.assertEqual(results[first.id]["status"], "finish")
        self.assertEqual(results[first.id]["worker_flag"], "1")
        self.assertEqual(results[failing.id]["status"], "finish")
        self.assertEqual(results[failing.id]["worker_flag"], "0")
        self.assertEqual(results[failing.id]["depend_task_id"], first.id)
        self.assertEqual(results[skipped.id]["status"], "skipped")
        self.assertEqual(results[skipped.id]["depend_task_id"], failing.id)
        self.assertEqual(results[echoed.id]["status"], "finish")
        self.assertEqual(results[echoed.id]["worker_message"], '{"after":"first"}')
        self.assertEqual(results[echoed.id]["depend_task_id"], first.id)
        # A committed queue that ran takes no more tasks: 412.2, typed.
        with self.assertRaises(QueueStateError) as refused:
            self.client.queue_commit(queue.id)
        self.assertEqual(refused.exception.code, "412.2")

    def test_errors_carry_their_code(self):
        with self.assertRaises(QueueNotFound) as err:
            self.client.queue_result("0123456789abcdef")
        self.assertEqual(err.exception.code, "412.1")
        with self.assertRaises(BadRequest) as err:
            self.client.queue_result("not-an-id")
        self.assertEqual(err.exception.code, "403.6")
        with self.assertRaises(AgentNotFound) as err:
            self.client.rt_exec("never-seen-agent", "apptest", "helloword")
        self.assertEqual(err.exception.code, "414.1")
        with self.assertRaises(TaskNotFound) as err:
            self.client.task_result("fedcba9876543210")
        self.assertEqual(err.exception.code, "417.1")
        wrong_key = Client(self.client.url, self.client.auth_id, "not-the-key")
        with self.assertRaises(AuthError) as err:
            wrong_key.info_apps()
        self.assertEqual(err.exception.code, "401.5")
        self.assertIsInstance(err.exception, ElvesError)

    def test_output_followed_to_the_end(self):
        started = self.client.rt_exec(self.agent, "elvestest", "ticks", param={"n": "15"},
                                      wait_s=1)
        self.assertEqual(started.get("state"), "running", started)
        chunks = []
        text, end = self.client.follow_output(started["id"], on_chunk=chunks.append)
        expected = "".join("tick %d\n" % i for i in range(1, 16))
        expected += "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ticked 15</ElvesWResult>\n"
        self.assertEqual(text, expected)
        # Seen as it came, in more than one piece (15 ticks 100 ms apart).
        self.assertGreater(len(chunks), 1)
        self.assertEqual(end["state"], "finished")
        self.assertEqual(end["worker_flag"], "1")
        stderr = self.client.task_output(started["id"], stream="stderr")
        self.assertTrue(stderr["data"].startswith("stderr tick 1\n"), stderr)
        result = self.client.wait_task(started["id"], timeout_s=30)
        self.assertEqual(result["worker_message"], "ticked 15")

    def test_a_dropped_stream_resumes_without_loss_or_repeat(self):
        real_events = elves_client.client._events
        drops = []

        def dropping_once(response):
            for event in real_events(response):
                yield event
                if not drops:
                    # The connection breaks right after the first event.
                    drops.append(event.id)
                    raise http.client.IncompleteRead(b"")

        started = self.client.rt_exec(self.agent, "elvestest", "ticks", param={"n": "20"},
                                      wait_s=1)
        with mock.patch("elves_client.client._events", dropping_once):
            text, end = self.client.follow_output(started["id"])
        self.assertEqual(len(drops), 1)
        expected = "".join("tick %d\n" % i for i in range(1, 21))
        expected += "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ticked 20</ElvesWResult>\n"
        self.assertEqual(text, expected)
        self.assertEqual(end["state"], "finished")

    def test_following_an_unknown_task_is_a_typed_error(self):
        with self.assertRaises(TaskNotFound):
            list(self.client.task_follow("0123456789abcdef"))

    def test_every_documented_endpoint_has_a_method(self):
        document = self.client.openapi()
        self.assertTrue(document["openapi"].startswith("3."))
        documented = set(document["paths"])
        self.assertEqual(documented, set(Client.ENDPOINTS))
        for path, method in Client.ENDPOINTS.items():
            self.assertTrue(callable(getattr(self.client, method, None)), (path, method))
        self.assertIn("x-error-codes", document["paths"]["/api/v2/queue/commit"]["post"])

    def test_upload_installs_and_a_conflict_is_refused(self):
        package = _app_zip("sdk v1")
        uploaded = self.client.app_upload(package, filename="sdkdemo_1.0.zip",
                                          sha256=hashlib.sha256(package).hexdigest())
        self.assertEqual((uploaded["app"], uploaded["version"]), ("sdkdemo", "1.0"))
        self.assertEqual(uploaded["sha256"], hashlib.sha256(package).hexdigest())
        with self.assertRaises(PackageRefused) as refused:
            self.client.app_upload(_app_zip("other"), filename="sdkdemo_1.0.zip")
        self.assertEqual(refused.exception.code, "415.2")
        # The agent installs it within a heartbeat or two.
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = self.client.rt_exec(self.agent, "sdkdemo", "f", timeout=20)
                if answer["worker_message"] == "sdk v1":
                    break
            except ElvesError:
                pass
            self.assertLess(time.monotonic(), deadline, "sdkdemo never ran on the agent")
            time.sleep(0.2)
        self.assertEqual(self.client.app_versions("sdkdemo")["online_version"], "1.0")

    def test_info_lists_the_agent(self):
        self.assertIn(self.agent, self.client.info_agents())
        detail = self.client.agent_detail(self.agent)
        self.assertIs(detail["online"], True)
        self.assertEqual(self.client.healthz()["status"], "ok")


if __name__ == "__main__":
    unittest.main()
