"""Typed errors: every refused v2 call raises an ``ElvesError`` carrying the center's code.

The class follows the code's family (SPEC §8 error table), and a few codes that callers handle
on their own have their own class; ``error_for`` picks the most specific one. ``ElvesError.code``
is always the exact code, e.g. ``"412.2"``.
"""

import re


class ElvesError(Exception):
    """A v2 call answered ``flag: "false"``: ``code`` and ``message`` from ``[code]message``."""

    def __init__(self, code, message, endpoint=""):
        self.code = code
        self.message = message
        self.endpoint = endpoint
        where = "%s: " % endpoint if endpoint else ""
        super().__init__("%s[%s]%s" % (where, code, message))


class TransportError(Exception):
    """The center could not be reached, or answered something that is not the v2 envelope."""


class AuthError(ElvesError):
    """401.x: the signature, the auth id, the timestamp or a missing permission."""


class PermissionDenied(AuthError):
    """401.6: the auth id may not do this."""


class ComponentDisabled(ElvesError):
    """402.x: the supervisor, cron or queue component is not enabled on this center."""


class BadRequest(ElvesError):
    """403.x: a bad parameter; the message names it."""


class AgentUnreachable(ElvesError):
    """410.1: the job could not be sent to the agent (offline)."""


class NotFound(ElvesError):
    """Something named by the call does not exist (411.1, 412.1, 413.x, 414.1, 416.1, 417.1)."""


class CronNotFound(NotFound):
    """411.1."""


class QueueNotFound(NotFound):
    """412.1."""


class AuthIdNotFound(NotFound):
    """413.1."""


class AppNotFound(NotFound):
    """413.2."""


class AgentNotFound(NotFound):
    """414.1: the agent was never seen."""


class BatchNotFound(NotFound):
    """416.1."""


class TaskNotFound(NotFound):
    """417.1."""


class QueueStateError(ElvesError):
    """412.2 / 412.3 / 412.4: the queue's state does not allow this, a stop failed, or a
    dependency is not a task of the queue."""


class PackageRefused(ElvesError):
    """415.x: a package was refused, or the version exists with other content."""


class BatchStateError(ElvesError):
    """416.2: the batch's state does not allow this."""


class InternalError(ElvesError):
    """500: the center failed (the message has a short reason)."""


_BY_CODE = {
    "401.6": PermissionDenied,
    "410.1": AgentUnreachable,
    "411.1": CronNotFound,
    "412.1": QueueNotFound,
    "413.1": AuthIdNotFound,
    "413.2": AppNotFound,
    "414.1": AgentNotFound,
    "416.1": BatchNotFound,
    "416.2": BatchStateError,
    "417.1": TaskNotFound,
    "500": InternalError,
}

_BY_FAMILY = {
    "401": AuthError,
    "402": ComponentDisabled,
    "403": BadRequest,
    "412": QueueStateError,
    "415": PackageRefused,
}

_ERROR_TEXT = re.compile(r"^\[([0-9]+(?:\.[0-9]+)?)\](.*)$", re.S)


def error_for(error_text, endpoint=""):
    """The typed error of an envelope's ``error`` (``[code]message``)."""
    match = _ERROR_TEXT.match(error_text or "")
    if not match:
        return ElvesError("", error_text or "the call failed without an error text", endpoint)
    code, message = match.group(1), match.group(2)
    cls = _BY_CODE.get(code) or _BY_FAMILY.get(code.split(".")[0], ElvesError)
    return cls(code, message, endpoint)
