"""The peers bench's Python client, as most callers would write one.

- `elves-rt`: rt/exec calls to an elves center over one keep-alive HTTP connection
  (http.client), signed with MD5 as README "Signing" says; one at a time.
- `celery-rt`: `run.delay().get()`, one at a time.
- `celery-drain`: N `delay()`s, then every result.
- `versions`: Python's, Celery's and kombu's.

Prints one JSON object on its last line: `{"ms": [...]}` for the rt modes (measured calls only,
after the warm-up), `{"seconds": s, "ok": n}` for the drain.
"""

import argparse
import hashlib
import http.client
import json
import sys
import time
import urllib.parse


def sign(path, params, auth_key):
    """MD5 of `path?k=v&...` (sorted by key, values unencoded) followed by the auth key."""
    text = path + "?" + "&".join(f"{key}={params[key]}" for key in sorted(params))
    return hashlib.md5((text + auth_key).encode()).hexdigest()


def elves_rt(args):
    url = urllib.parse.urlsplit(args.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    path = "/api/v2/rt/exec"
    samples = []
    for n in range(args.warmup + args.calls):
        started = time.perf_counter()
        params = {
            "ip": args.ip,
            "app": "noop",
            "func": "run",
            "param": args.param,
            "auth_id": args.auth_id,
            "timestamp": str(int(time.time())),
        }
        params["sign_type"] = "MD5"
        params["sign"] = sign(path, {k: v for k, v in params.items() if k != "sign_type"},
                              args.auth_key)
        body = urllib.parse.urlencode(params)
        connection.request("POST", path, body=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = json.loads(connection.getresponse().read())
        elapsed = (time.perf_counter() - started) * 1000.0
        result = answer.get("result") or {}
        if answer.get("flag") != "true" or result.get("worker_message") != "ok":
            sys.exit(f"rt/exec answered {answer}")
        if n >= args.warmup:
            samples.append(elapsed)
    connection.close()
    print(json.dumps({"ms": samples}))


def celery_rt(args):
    from celery_app import run

    # The first call also waits for the worker to be up.
    run.delay().get(timeout=120)
    samples = []
    for n in range(args.warmup + args.calls):
        started = time.perf_counter()
        result = run.delay().get(timeout=60)
        elapsed = (time.perf_counter() - started) * 1000.0
        if result != "ok":
            sys.exit(f"the Celery task answered {result!r}")
        if n >= args.warmup:
            samples.append(elapsed)
    print(json.dumps({"ms": samples}))


def celery_drain(args):
    from celery_app import run

    started = time.perf_counter()
    pending = [run.delay() for _ in range(args.tasks)]
    ok = sum(1 for result in pending if result.get(timeout=600) == "ok")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "ok": ok}))


def versions(_args):
    import celery
    import kombu

    print(json.dumps({
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "kombu": kombu.__version__,
    }))


def main():
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    rt = modes.add_parser("elves-rt")
    for name in ("--url", "--auth-id", "--auth-key", "--ip"):
        rt.add_argument(name, required=True)
    rt.add_argument("--param", default="{}")
    for mode in (rt, modes.add_parser("celery-rt")):
        mode.add_argument("--warmup", type=int, default=10)
        mode.add_argument("--calls", type=int, default=300)
    modes.add_parser("celery-drain").add_argument("--tasks", type=int, default=5000)
    modes.add_parser("versions")
    args = parser.parse_args()
    {"elves-rt": elves_rt, "celery-rt": celery_rt, "celery-drain": celery_drain,
     "versions": versions}[args.mode](args)


if __name__ == "__main__":
    main()
