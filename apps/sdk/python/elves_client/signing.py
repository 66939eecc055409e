"""Request signing (SPEC §11 "Signing"), the same rules as the center's `shared/src/sign.rs`.

The sign string is ``path + "?" + pairs``: every parameter except ``sign`` and ``sign_type``
(so ``auth_id`` and ``timestamp`` are in it), as ``key=value`` with unencoded values, sorted by
key then value in byte order, joined by ``&``. MD5 hashes the sign string followed by the auth
key; HMAC-SHA256 keys the sign string with the auth key. Both are lowercase hex.
"""

import hashlib
import hmac

MD5 = "MD5"
HMAC_SHA256 = "HMAC-SHA256"
SIGN_TYPES = (MD5, HMAC_SHA256)


def normalize_sign_type(sign_type):
    """The canonical spelling of a sign type (matched case-insensitively, as the center does)."""
    for known in SIGN_TYPES:
        if sign_type.upper() == known:
            return known
    raise ValueError("sign_type must be MD5 or HMAC-SHA256, got %r" % (sign_type,))


def sign_string(path, pairs):
    """The text that is signed, for ``pairs`` (a list of (key, value) strings)."""
    kept = [(k, v) for (k, v) in pairs if k not in ("sign", "sign_type")]
    # Byte order, as the center sorts Rust strings: UTF-8 bytes, key first, then value.
    kept.sort(key=lambda kv: (kv[0].encode("utf-8"), kv[1].encode("utf-8")))
    return path + "?" + "&".join("%s=%s" % (k, v) for (k, v) in kept)


def compute(sign_type, text, auth_key):
    """Lowercase hex sign of ``text`` with ``auth_key``."""
    sign_type = normalize_sign_type(sign_type)
    if sign_type == MD5:
        return hashlib.md5((text + auth_key).encode("utf-8")).hexdigest()
    return hmac.new(auth_key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_params(path, pairs, sign_type, auth_key):
    """``pairs`` with ``sign_type`` and ``sign`` appended (any given ones are replaced)."""
    sign_type = normalize_sign_type(sign_type)
    kept = [(k, v) for (k, v) in pairs if k not in ("sign", "sign_type")]
    sign = compute(sign_type, sign_string(path, kept), auth_key)
    return kept + [("sign_type", sign_type), ("sign", sign)]
