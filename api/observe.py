"""What each request did, for the metrics (api.metrics), one log line (logger ``omnimember.requests``)
and the request's trace (api.tracing).

`Observe`, the outermost middleware, times the request, takes the response's status from its
start message and, once the response has ended (an export's whole stream), moves the counters and
logs one line. What only the routes know (the GraphQL operation, the error codes answered) they
note on the request's `Observation` through `operation` and `failed`, found in a context variable:
no argument threads through the layers, and outside a request both do nothing.

The log line holds no personal data: no query text, variables, phone, name or token; the key by its
prefix and role; the path only when it matched a route (ids, never a query string). Labels of the
metrics are bounded: the route's template, the outcome an error code of the service's own (or
``HTTP_<status>``), the operation name only as `operation_label` allows.

The metrics (OMNIMEMBER_METRICS) and the log line (OMNIMEMBER_REQUEST_LOG) can each be turned off;
with both off and no traces the app has no `Observe` at all (api.app).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from api.metrics import Metrics

REQUEST_LOG = "omnimember.requests"
MAX_OPERATIONS = 1_000  # distinct operation names a process labels; later new names count as "other"
ANONYMOUS = "anonymous"
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MOBILE_LIKE = re.compile(r"\d{7}")  # a name carrying a long run of digits could carry a phone number
_FIXED_OUTCOMES = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}

log = logging.getLogger(REQUEST_LOG)


class Observation:
    """What the routes noted about one request."""

    __slots__ = ("codes", "operation")

    def __init__(self) -> None:
        self.operation: str | None = None
        self.codes: list[str] | None = None


_current: ContextVar[Observation | None] = ContextVar("omnimember_observation", default=None)
_labels: dict[str, str] = {}  # operation name -> its label, at most MAX_OPERATIONS + 1 entries


def current() -> Observation | None:
    """What the routes noted so far about the request being answered (None outside `Observe`)."""
    return _current.get()


def failed(*codes: str) -> None:
    """The request answers these error codes (the first is its outcome)."""
    seen = _current.get()
    if seen is not None:
        seen.codes = [*(seen.codes or ()), *(_code_label(code) for code in codes)]


def failed_with(errors: Iterable[GraphQLError]) -> None:
    """The request answers these GraphQL errors."""
    failed(*(str((error.extensions or {}).get("code") or "UNCODED") for error in errors))


def operation(requested: str | None, document: DocumentNode | None) -> None:
    """The operation the request runs: the one named in ``requested``, or the document's only one
    (``document`` None: refused by the checks, so none: `anonymous`)."""
    seen = _current.get()
    if seen is not None:
        seen.operation = ANONYMOUS if document is None else operation_label(_operation_name(requested, document))


def _operation_name(requested: str | None, document: DocumentNode) -> str | None:
    names = [
        definition.name.value if definition.name else None
        for definition in document.definitions
        if isinstance(definition, OperationDefinitionNode)
    ]
    if requested is not None:
        return requested if requested in names else None
    return names[0] if len(names) == 1 else None


def operation_label(name: str | None) -> str:
    """A bounded label: the name if it is 1-64 of [A-Za-z0-9_] without a long run of digits, else
    `anonymous`; names past the first MAX_OPERATIONS of the process are `other`."""
    if name is None:
        return ANONYMOUS
    label = _labels.get(name)
    if label is None:
        if not _NAME.fullmatch(name) or _MOBILE_LIKE.search(name):
            return ANONYMOUS
        if len(_labels) >= MAX_OPERATIONS:
            return "other"
        label = _labels[name] = name
    return label


def _code_label(code: str) -> str:
    return code if _CODE.fullmatch(code) else "OTHER"


class Observe:
    """Times every HTTP request, counts it and logs one line about it (see the module docstring);
    ``metrics`` None: nothing counted, ``log_requests`` False: no line."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, log_requests: bool = True) -> None:
        self._app = app
        self._metrics = metrics
        self._log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = Observation()
        token = _current.set(seen)
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        except Exception:
            if status == 0:  # starlette's outermost middleware answers 500 for it
                status = 500
                seen.codes = ["INTERNAL"]
            raise
        finally:
            _current.reset(token)
            self._record(scope, seen, status, time.perf_counter() - started)

    def _record(self, scope: Scope, seen: Observation, status: int, seconds: float) -> None:
        codes = seen.codes
        if codes:
            outcome = codes[0]
        elif 200 <= status < 400:
            outcome = "ok"
        else:
            outcome = "NO_RESPONSE" if status == 0 else _FIXED_OUTCOMES.get(status, f"HTTP_{status}")
            codes = [outcome]
        route = route_template(scope)
        if self._metrics is not None:
            self._metrics.observe(route or "other", seen.operation or "", outcome, seconds, codes)
        if self._log_requests and log.isEnabledFor(logging.INFO):
            principal = scope.get("principal")
            fields: dict[str, Any] = {
                "request_id": scope.get("request_id"),  # set by api.auth (not for the open paths)
                "method": scope["method"],
                "path": scope["path"] if route else None,
                "route": route or "other",
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "operation": seen.operation,
                "key": principal.key_prefix if principal is not None else None,
                "role": str(principal.role) if principal is not None else None,
                "outcome": outcome,
            }
            if codes and len(codes) > 1:
                fields["codes"] = list(dict.fromkeys(codes))
            level = logging.WARNING if status >= 500 else logging.INFO
            sink = _sole_json_handler(level)
            if sink is not None:
                sink.request_line(level, fields)
            else:
                # makeRecord and handle rather than log.log: the caller is always this line, and
                # finding it (findCaller walks the stack) was a tenth of the line's cost.
                log.handle(log.makeRecord(log.name, level, __file__, 0, RequestLine(fields), (), None))


def route_template(scope: Scope) -> str | None:
    """The template of the route the request matched (found again for a request refused before
    routing, such as a 401), or None."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestLine:
    """A request's log message: its fields, written as JSON by `JsonLines`, else as one line of text."""

    __slots__ = ("_text", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            f = self.fields
            extras = " ".join(
                f"{name}={f[name]}" for name in ("operation", "key", "role", "request_id") if f.get(name) is not None
            )
            where = f["path"] or f["route"]
            self._text = f"{f['method']} {where} {f['status']} {f['duration_ms']} ms {f['outcome']} {extras}"
        return self._text


# One encoder: json.dumps with any argument builds a new one for every line.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, then a request's fields, or the message
    (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc_millis(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, RequestLine):
            line.update(record.msg.fields)
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(line)


class _Fields:
    """A request's line on its way to `_ServerHandler` without a LogRecord: when, how grave, what."""

    __slots__ = ("created", "fields", "level")

    def __init__(self, created: float, level: int, fields: dict[str, Any]) -> None:
        self.created, self.level, self.fields = created, level, fields

    def json(self) -> str:
        """The line JsonLines writes for a RequestLine record of the request log."""
        level = logging.getLevelName(self.level).lower()
        return _JSON.encode({"time": _utc_millis(self.created), "level": level, "logger": REQUEST_LOG, **self.fields})


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _utc_millis(created: float) -> str:
    """`created` as ISO 8601 in UTC to the millisecond, as datetime.isoformat writes it; the
    seconds part formatted once per second (a datetime per line was a tenth of the line's cost)."""
    global _second
    whole = int(created)
    micro = round((created - whole) * 1_000_000)  # as datetime rounds a timestamp: to the microsecond
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micro // 1000:03d}+00:00"


def _sole_json_handler(level: int) -> _ServerHandler | None:
    """The server's handler, when it alone takes the request log's records, as JSON: a line then
    goes to it as its fields, without a LogRecord (making one and passing it down the loggers was
    most of what a line cost a request: issue 16's 5%). None otherwise (another handler, a filter,
    the text format, a test's log capture): the line is logged as any record."""
    root = logging.root
    if len(root.handlers) != 1 or log.handlers or log.filters or root.filters or not log.propagate:
        return None
    handler = root.handlers[0]
    if not isinstance(handler, _ServerHandler) or not isinstance(handler.formatter, JsonLines):
        return None
    return handler if not handler.filters and level >= handler.level else None


class _ServerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (so that it installs it once per process). Lines are
    written in batches: at most FLUSH_SECONDS after the first of a batch, at once from WARNING up or
    past FLUSH_LINES, and at exit (logging.shutdown). A request's line is also formatted then, with
    its batch (its fields are fixed once logged); other records at once, as their arguments may
    change. A write and flush per request line was a third of its cost, and formatting lines one
    by one among the requests' work twice what it costs in a batch. A process killed outright
    loses at most FLUSH_SECONDS of lines."""

    FLUSH_SECONDS = 0.2
    FLUSH_LINES = 256

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str | logging.LogRecord | _Fields] = []
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        pending = record if isinstance(record.msg, RequestLine) else self._formatted(record)
        if pending is not None:
            self._add(pending, record.levelno)

    def request_line(self, level: int, fields: dict[str, Any]) -> None:
        """A request's line, written as JsonLines writes a RequestLine record (`_sole_json_handler`)."""
        self._add(_Fields(time.time(), level, fields), level)

    def _add(self, pending: str | logging.LogRecord | _Fields, level: int) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending.append(pending)
            if level >= logging.WARNING or len(self._pending) >= self.FLUSH_LINES:
                self._write()
            elif self._timer is None:
                self._timer = threading.Timer(self.FLUSH_SECONDS, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _formatted(self, record: logging.LogRecord) -> str | None:
        try:
            return self.format(record)
        except Exception:
            self.handleError(record)
            return None

    def _write(self) -> None:
        """Under the lock: the pending lines, then the stream flushed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        lines = [
            item if isinstance(item, str) else item.json() if isinstance(item, _Fields) else self._formatted(item)
            for item in pending
        ]
        try:
            self.stream.write("".join(line + self.terminator for line in lines if line is not None))
            self.stream.flush()
        except Exception:  # a closed or broken stream: report it where one can, and go on
            # Never raise from here: this runs on the flushing timer's thread too, where an
            # exception escapes to nobody (found in the suite: a test runner's closed stderr).
            with contextlib.suppress(Exception):
                self.handleError(logging.makeLogRecord({"msg": "request log write failed"}))


TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(log_format: str, stream: TextIO | None = None) -> None:
    """The server's log output on standard error (or ``stream``): every record of the service at INFO
    and above, as JSON lines (``json``, the default) or text (``text``; OMNIMEMBER_LOG_FORMAT)."""
    root = logging.getLogger()
    if any(isinstance(handler, _ServerHandler) for handler in root.handlers):
        return
    # No line shows the thread, process or multiprocessing names: a record need not look them up
    # (the logging HOWTO's "Optimization"; a fifth of a record's cost).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _ServerHandler(stream)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
