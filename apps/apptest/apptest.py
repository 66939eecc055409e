# apptest: the example app, written in the original ELVES SDK style.
#
# Each func takes the decoded JSON param and returns (flag, result).
# Methods of the class named like the app are found first; module-level functions
# (see ping below) work as well.

import json
import os
import platform
import socket
import time


class apptest(object):
    def helloword(self, param):
        return True, param["my"]

    def echo(self, param):
        """The param back, as JSON."""
        return True, json.dumps(param, ensure_ascii=False, sort_keys=True)

    def info(self, param):
        """A little about the host and the task, as JSON."""
        return True, json.dumps(
            {
                "hostname": socket.gethostname(),
                "python": platform.python_version(),
                "task_id": os.environ.get("ELVES_TASK_ID", ""),
                "type": os.environ.get("ELVES_TYPE", ""),
                "mode": os.environ.get("ELVES_MODE", ""),
            },
            sort_keys=True,
        )

    def fail(self, param):
        return False, "failed on purpose"

    def error(self, param):
        raise ValueError("error on purpose")

    def sleep(self, param):
        """Sleeps param["seconds"] (default 1), to try timeouts."""
        seconds = float(param.get("seconds", 1)) if isinstance(param, dict) else 1.0
        time.sleep(seconds)
        return True, "slept %s s" % seconds


def ping(param):
    return True, "pong"
