# filecheck: hash or stat files and compare them with expected values (a configuration or
# integrity check across a fleet).
#
#   stat({"paths": ["/etc/hosts"]})
#   hash({"paths": ["/etc/hosts"], "algorithm": "sha256"})
#   check({"expected": {"/etc/hosts": {"sha256": "…", "size": 220, "mode": "0644"}}})
#
# Each answer is a JSON object path -> facts ({exists, size, mode, sha256 …}); `check` adds
# `mismatches` (a list of "field: expected X, found Y") per path and fails when any path
# differs or is missing. Algorithms: those of hashlib (sha256 by default, md5, sha1, …).

import hashlib
import json
import os
import stat as stat_module

CHUNK = 1024 * 1024


def facts(path, algorithm=None):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as err:
        return {"exists": False, "error": err.strerror or str(err)}
    found = {
        "exists": True,
        "type": "dir" if stat_module.S_ISDIR(info.st_mode) else "file",
        "size": info.st_size,
        "mode": "%04o" % stat_module.S_IMODE(info.st_mode),
        "mtime": int(info.st_mtime),
    }
    if algorithm and stat_module.S_ISREG(info.st_mode):
        digest = hashlib.new(algorithm)
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    digest.update(chunk)
        except OSError as err:
            found["error"] = err.strerror or str(err)
            return found
        found[algorithm] = digest.hexdigest()
    return found


def paths_of(param):
    paths = param.get("paths") if isinstance(param, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError("param.paths must be a non-empty list of paths")
    return paths


def algorithm_of(param):
    algorithm = param.get("algorithm", "sha256") if isinstance(param, dict) else "sha256"
    if algorithm not in hashlib.algorithms_available:
        raise ValueError("unknown algorithm %r" % algorithm)
    return algorithm


def stat(param):
    try:
        paths = paths_of(param)
    except ValueError as err:
        return False, str(err)
    return True, json.dumps({path: facts(path) for path in paths}, sort_keys=True)


def hash(param):
    try:
        paths = paths_of(param)
        algorithm = algorithm_of(param)
    except ValueError as err:
        return False, str(err)
    return True, json.dumps({path: facts(path, algorithm) for path in paths}, sort_keys=True)


def mismatches(expected, found):
    if not found.get("exists"):
        return ["exists: expected true, found false"]
    wrong = []
    for field, want in sorted(expected.items()):
        have = found.get(field)
        if field == "size" and isinstance(want, int):
            ok = have == want
        else:
            ok = str(have).lower() == str(want).lower()
        if not ok:
            wrong.append("%s: expected %s, found %s" % (field, want, have))
    return wrong


def check(param):
    expected = param.get("expected") if isinstance(param, dict) else None
    if not isinstance(expected, dict) or not expected:
        return False, "param.expected must map paths to expected facts"
    report = {}
    all_match = True
    for path, want in sorted(expected.items()):
        if not isinstance(want, dict):
            return False, "expected[%s] must be an object of facts" % path
        algorithms = [field for field in want if field in hashlib.algorithms_available]
        if len(algorithms) > 1:
            return False, "expected[%s] names more than one hash" % path
        found = facts(path, algorithms[0] if algorithms else None)
        found["mismatches"] = mismatches(want, found)
        all_match = all_match and not found["mismatches"]
        report[path] = found
    return all_match, json.dumps(report, sort_keys=True)
