# cmd: run a shell command line on the host and answer with its output.
#
#   run({"command": "df -h /", "timeout": 30})
#
# The command runs under /bin/sh in its own process group; after `timeout` seconds (default
# 60, at most the task's own timeout matters) the whole group is killed and the call fails.
# The answer is stdout (and stderr after it when the command failed); the flag is true when
# the command exited 0.
#
# Dangerous command lines are refused before anything runs: the deny-list is a JSON list of
# regular expressions, searched in the command line. It is read from the file named by
# ELVES_CMD_DENY_FILE, else deny.json next to this file, else DEFAULT_DENY below.

import json
import os
import re
import signal
import subprocess

DEFAULT_DENY = [
    r"\brm\s+(-[a-zA-Z]*\s+)*-[a-zA-Z]*[rR][a-zA-Z]*\s+(-[a-zA-Z]*\s+)*/+(\s|$|\*)",
    r"\bmkfs(\.\w+)?\b",
    r"\bdd\b.*\bof=/dev/",
    r">\s*/dev/(sd|hd|nvme|vd|xvd)",
    r"\b(shutdown|reboot|halt|poweroff)\b",
    r"\binit\s+[06]\b",
    r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}",
    r"\bchmod\s+(-[a-zA-Z]+\s+)*[0-7]*777\s+/(\s|$)",
]

DEFAULT_TIMEOUT_S = 60
MAX_OUTPUT = 1024 * 1024


def deny_list():
    path = os.environ.get("ELVES_CMD_DENY_FILE") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "deny.json"
    )
    if not os.path.exists(path):
        return DEFAULT_DENY
    with open(path, encoding="utf-8") as f:
        patterns = json.load(f)
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError("deny list %s must be a JSON list of regular expressions" % path)
    return patterns


def denied_by(command, patterns):
    """The first pattern that matches the command line, or None."""
    for pattern in patterns:
        if re.search(pattern, command):
            return pattern
    return None


def parse_request(param):
    if isinstance(param, str):
        param = {"command": param}
    if not isinstance(param, dict):
        raise ValueError('param must be {"command": "...", "timeout": seconds}')
    command = param.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ValueError("param.command must be a non-empty string")
    timeout = param.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise ValueError("param.timeout must be seconds between 0 and 86400")
    return command, float(timeout)


def run(param):
    try:
        command, timeout = parse_request(param)
        pattern = denied_by(command, deny_list())
    except ValueError as err:
        return False, str(err)
    if pattern is not None:
        return False, "command refused by the deny-list (%s)" % pattern
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return False, "command timed out after %g s" % timeout
    out = stdout[:MAX_OUTPUT].decode("utf-8", "replace")
    if process.returncode == 0:
        return True, out
    err = stderr[:MAX_OUTPUT].decode("utf-8", "replace")
    return False, "exit status %d\n%s%s" % (process.returncode, out, err)
