# ELVES Python processor SDK (Python 3).
#
# A processor receives the results of the P-mode tasks of one app (SPEC §6), wherever it runs.
# Two ways, pick one per app:
#
#   1. The bus (default): the agent publishes each result, MessagePack with named fields, to
#      the topic exchange <namespace> with routing key processor.<app>. consume_bus() declares
#      the durable queue <namespace>.processor.<app>, binds it, and calls your handler for
#      every result. Needs `pip install pika` (the only dependency; MessagePack is decoded
#      here, in pure Python).
#   2. HTTP: the app's appcfg.json names an endpoint,
#        {"Processor": {"Url": "http://host:8000/results", "Timeout": 5}}
#      and the agent POSTs each result there as JSON. serve_http() is such an endpoint,
#      standard library only.
#
# Either way the handler gets one dict per result:
#   {"id", "agent", "type" (rt|queue|cron), "mode", "app", "func", "worker_flag" (1|0|-1),
#    "worker_message", "worker_costtime" (ms), "started_at", "finished_at" (unix ms), "error"}
# A handler that raises: the bus message is dropped (not requeued, so a bad result cannot loop
# forever) and the HTTP answer is 500; both are logged to stderr.
#
# Command line (prints each result as a JSON line):
#   python3 elves_processor.py --app apptest --amqp amqp://guest:guest@127.0.0.1:5672/%2f
#   python3 elves_processor.py --http 127.0.0.1:8000
#   python3 elves_processor.py --decode result.msgpack

import argparse
import json
import struct
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MsgpackError(ValueError):
    pass


def decode_msgpack(data):
    """Decodes one MessagePack value (the subset the wire uses, and more)."""
    value, end = _decode(memoryview(data), 0)
    if end != len(data):
        raise MsgpackError("trailing bytes after the value")
    return value


def _take(data, pos, n):
    if pos + n > len(data):
        raise MsgpackError("truncated")
    return data[pos:pos + n], pos + n


def _decode(data, pos):
    if pos >= len(data):
        raise MsgpackError("truncated")
    byte = data[pos]
    pos += 1
    if byte <= 0x7F:
        return byte, pos
    if byte >= 0xE0:
        return byte - 0x100, pos
    if 0x80 <= byte <= 0x8F:
        return _map(data, pos, byte & 0x0F)
    if 0x90 <= byte <= 0x9F:
        return _array(data, pos, byte & 0x0F)
    if 0xA0 <= byte <= 0xBF:
        raw, pos = _take(data, pos, byte & 0x1F)
        return bytes(raw).decode("utf-8"), pos
    fixed = {
        0xC0: None,
        0xC2: False,
        0xC3: True,
    }
    if byte in fixed:
        return fixed[byte], pos
    sized = {
        0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
        0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
        0xCA: ">f", 0xCB: ">d",
    }
    if byte in sized:
        fmt = sized[byte]
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        return struct.unpack(fmt, raw)[0], pos
    lengths = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}
    if byte in lengths:
        fmt = lengths[byte]
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        raw, pos = _take(data, pos, struct.unpack(fmt, raw)[0])
        if byte in (0xD9, 0xDA, 0xDB):
            return bytes(raw).decode("utf-8"), pos
        return bytes(raw), pos
    containers = {0xDC: (">H", _array), 0xDD: (">I", _array), 0xDE: (">H", _map), 0xDF: (">I", _map)}
    if byte in containers:
        fmt, decode = containers[byte]
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        return decode(data, pos, struct.unpack(fmt, raw)[0])
    raise MsgpackError("unsupported type byte 0x%02x" % byte)


def _array(data, pos, n):
    items = []
    for _ in range(n):
        item, pos = _decode(data, pos)
        items.append(item)
    return items, pos


def _map(data, pos, n):
    items = {}
    for _ in range(n):
        key, pos = _decode(data, pos)
        value, pos = _decode(data, pos)
        items[key] = value
    return items, pos


def decode_result(body, content_type=""):
    """A result message body (MessagePack, or JSON when the content type says so) as a dict."""
    if "json" in (content_type or ""):
        return json.loads(body.decode("utf-8"))
    return decode_msgpack(body)


def consume_bus(handler, app, amqp_url, namespace="elves", prefetch=16):
    """Calls handler(result) for every P-mode result of `app` on the bus; runs until stopped."""
    import pika  # Only the bus mode needs it.

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(exchange=namespace, exchange_type="topic", durable=True)
    queue = "%s.processor.%s" % (namespace, app)
    channel.queue_declare(queue=queue, durable=True)
    channel.queue_bind(queue=queue, exchange=namespace, routing_key="processor.%s" % app)
    channel.basic_qos(prefetch_count=prefetch)

    def on_message(chan, method, properties, body):
        try:
            result = decode_result(body, getattr(properties, "content_type", ""))
            handler(result)
        except Exception:  # noqa: BLE001 - a bad result must not stop the processor
            traceback.print_exc()
            chan.basic_nack(delivery_tag=method.delivery_tag, requeue=False)
            return
        chan.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=on_message)
    try:
        channel.start_consuming()
    finally:
        connection.close()


def make_http_server(handler, host="0.0.0.0", port=8000):
    """An HTTP server that calls handler(result) for every POSTed result (any path)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                handler(json.loads(body.decode("utf-8")))
            except Exception:  # noqa: BLE001 - answered with 500, the server goes on
                traceback.print_exc()
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt, *args):
            sys.stderr.write("processor: " + (fmt % args) + "\n")

    return ThreadingHTTPServer((host, port), Handler)


def serve_http(handler, host="0.0.0.0", port=8000):
    """Serves POSTed results until stopped."""
    server = make_http_server(handler, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _print_result(result):
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description="print the P-mode results of an ELVES app")
    parser.add_argument("--app", help="the app whose results to consume from the bus")
    parser.add_argument("--amqp", help="RabbitMQ URL (bus mode)")
    parser.add_argument("--namespace", default="elves", help="bus namespace (exchange name)")
    parser.add_argument("--http", metavar="HOST:PORT", help="serve POSTed results (HTTP mode)")
    parser.add_argument("--decode", metavar="FILE", help="decode one MessagePack result file")
    args = parser.parse_args(argv)
    if args.decode:
        with open(args.decode, "rb") as file:
            _print_result(decode_msgpack(file.read()))
    elif args.http:
        host, _, port = args.http.rpartition(":")
        serve_http(_print_result, host or "0.0.0.0", int(port))
    elif args.app and args.amqp:
        consume_bus(_print_result, args.app, args.amqp, args.namespace)
    else:
        parser.error("give --app and --amqp, or --http, or --decode")


if __name__ == "__main__":
    main()
