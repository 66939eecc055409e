# Example processor for the apptest app: keeps every P-mode result as one JSON line in a file
# and prints a one-line summary. Run it next to the SDK (this directory):
#
#   bus:   python3 example_processor.py --app apptest --amqp amqp://guest:guest@127.0.0.1:5672/%2f
#   HTTP:  python3 example_processor.py --http 127.0.0.1:8000
#          (with apps/apptest/appcfg.json: {"Processor": {"Url": "http://127.0.0.1:8000/", "Timeout": 5}})
#
# Results go to --out (default results.jsonl).

import argparse
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import elves_processor  # noqa: E402 - found through the path set above


def make_handler(out_path):
    lock = threading.Lock()

    def handle(result):
        outcome = {1: "ok", 0: "failed"}.get(result.get("worker_flag"), "error")
        sys.stderr.write(
            "%s %s %s.%s on %s: %s (%s ms)\n"
            % (
                result.get("type"),
                result.get("id"),
                result.get("app"),
                result.get("func"),
                result.get("agent"),
                outcome,
                result.get("worker_costtime"),
            )
        )
        with lock, open(out_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(result, sort_keys=True) + "\n")

    return handle


def main():
    parser = argparse.ArgumentParser(description="example ELVES processor")
    parser.add_argument("--app", default="apptest")
    parser.add_argument("--amqp")
    parser.add_argument("--namespace", default="elves")
    parser.add_argument("--http", metavar="HOST:PORT")
    parser.add_argument("--out", default="results.jsonl")
    args = parser.parse_args()
    handle = make_handler(args.out)
    if args.http:
        host, _, port = args.http.rpartition(":")
        elves_processor.serve_http(handle, host or "0.0.0.0", int(port))
    elif args.amqp:
        elves_processor.consume_bus(handle, args.app, args.amqp, args.namespace)
    else:
        parser.error("give --amqp or --http")


if __name__ == "__main__":
    main()
