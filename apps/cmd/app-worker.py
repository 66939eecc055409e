# ELVES Python SDK: the app-worker entry (Python 3, standard library only).
#
# The agent runs:  python3 app-worker.py <app> <func> <base64(param)>
# This file decodes the param (base64, then JSON; an empty param becomes {}), loads
# <app>.py from its own directory and calls <func> with the param:
#   - original SDK style: a class named like the app, instantiated without arguments,
#     whose method <func>(param) is called;
#   - or a module-level function <func>(param).
# The function returns (flag, result). The answer goes to stdout as
#   <ElvesWFlag>true|false</ElvesWFlag><ElvesWResult>str(result)</ElvesWResult>
# An exception, an unknown func or a bad param is answered with flag false and a short
# reason; the full traceback goes to stderr.
#
# Apps are self-contained packages, so every app carries its own copy of this file.
# The canonical copy is apps/sdk/python/app-worker.py; keep the copies identical.

import base64
import binascii
import importlib
import importlib.util
import json
import os
import sys
import traceback


def decode_param(param_b64):
    """The caller's JSON param, or {} when it is empty."""
    if not param_b64:
        return {}
    try:
        text = base64.b64decode(param_b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError("bad param: not base64 of UTF-8 text (%s)" % err) from None
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError("bad param: not JSON (%s)" % err) from None


def load_app(app, app_dir):
    # App names may hold '.' and '-', which import statements cannot name: load the file.
    path = os.path.join(app_dir, app + ".py")
    if not os.path.isfile(path):
        return importlib.import_module(app)
    spec = importlib.util.spec_from_file_location(app, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[app] = module
    spec.loader.exec_module(module)
    return module


def find_func(module, app, func):
    """The callable for <func>: a method of the class named like the app, else a
    module-level function. None when there is neither."""
    if func.startswith("_"):
        return None
    cls = getattr(module, app, None)
    if isinstance(cls, type):
        method = getattr(cls(), func, None)
        if callable(method):
            return method
    function = getattr(module, func, None)
    if callable(function) and not isinstance(function, type):
        return function
    return None


def flag_text(flag):
    # Apps return True/False or the strings "true"/"false" (the original SDK style).
    if isinstance(flag, str):
        return "true" if flag.strip().lower() == "true" else "false"
    return "true" if flag else "false"


def answer(flag, result):
    text = "<ElvesWFlag>%s</ElvesWFlag><ElvesWResult>%s</ElvesWResult>\n" % (
        flag_text(flag),
        result,
    )
    # Bytes, so that the output is UTF-8 whatever the locale of the agent host.
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    sys.stdout.flush()


def last_line(err):
    return traceback.format_exception_only(type(err), err)[-1].strip()


def run(argv):
    if len(argv) not in (3, 4):
        answer(False, "param error: usage: app-worker.py <app> <func> [base64(param)]")
        return
    app, func = argv[1], argv[2]
    param_b64 = argv[3] if len(argv) == 4 else ""
    app_dir = os.path.dirname(os.path.abspath(__file__))
    # Install directories may be read-only, and should stay as they were installed.
    sys.dont_write_bytecode = True
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        param = decode_param(param_b64)
        module = load_app(app, app_dir)
        target = find_func(module, app, func)
        if target is None:
            answer(False, "unknown func [%s] in app [%s]" % (func, app))
            return
        returned = target(param)
        try:
            flag, result = returned
        except (TypeError, ValueError):
            answer(False, "func [%s] must return (flag, result), got %r" % (func, returned))
            return
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        answer(False, last_line(err))
        return
    answer(flag, result)


if __name__ == "__main__":
    run(sys.argv)
