"""Settings: the only place that reads the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from store.urls import redacted

# As root the embedded server's package opens every parent of its data directory to others
# (o+rx), so root gets a system location instead of the working directory.
ROOT_HOME = Path("/var/lib/omnimember")
USER_HOME = Path(".omnimember")
LOG_FORMATS = ("json", "text")
TRUSTED_DOCUMENTS = ("off", "partners", "all")  # who runs registered documents only (api.persisted)


def _flag(value: str | None) -> bool | None:
    """An on/off variable: unset or empty is None (the default applies)."""
    if not value:
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _log_format(value: str) -> str:
    chosen = value.strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"OMNIMEMBER_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return chosen


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    chosen = value.strip().lower()
    if chosen not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return chosen


def default_home() -> Path:
    return ROOT_HOME if os.geteuid() == 0 else USER_HOME.resolve()


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one omnimember process: every setting, its variable and its default are in
    docs/configuration.md."""

    database_url: str | None
    home: Path
    secret: str | None
    pool_min_size: int = 2
    pool_max_size: int = 10
    dev: bool = False  # development mode: key-less loopback requests act as `dev_role` (api.auth)
    dev_role: str = "admin"  # the role of development mode's key-less requests, over every brand
    graphql_ide: bool | None = None  # GraphiQL at /graphql; None: on in development mode only
    introspection: bool | None = None  # None: on in development mode only
    suggestions: bool | None = None  # "did you mean" in validation errors; None: development mode only
    rate_limit: float = 5000.0  # requests a second per key and process (0: no limit); more answer 429
    phone_lookups: float = 30.0  # memberByPhone lookups a minute per key and process (0: no limit)
    max_body: int = 1 << 20  # bytes of a /graphql request body; larger ones answer 413 unread
    pool_timeout: float = 5.0  # seconds a request waits for a connection before a 503
    statement_timeout: float = 20.0  # seconds any one statement may run (0: no limit)
    request_deadline: float = 30.0  # seconds a /graphql request may take in all before a 503
    header_timeout: float = 10.0  # seconds a client has to send a request's headers
    body_timeout: float = 30.0  # seconds a client has to send a request's body
    max_exports: int = 4  # exports streaming at once per process; more answer 429
    shutdown_timeout: float = 10.0  # seconds in-flight requests get after SIGTERM
    metrics: bool = True  # GET /metrics and the counting behind it (api.metrics)
    request_log: bool = True  # one log line per request (api.observe)
    traces: bool = False  # OpenTelemetry traces (api.tracing): on when an OTLP endpoint is set
    traces_protocol: str = "http/protobuf"  # OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: the only one supported
    log_format: str = "json"  # the server's log lines, one per request among them: json or text
    trusted_documents: str = "off"  # off, partners (every partner key) or all: held to registered documents

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def number(name: str, default: float) -> float:
            return float(environ.get(name) or default)

        defaults = cls(None, Path("."), None)
        return cls(
            database_url=environ.get("DATABASE_URL") or None,
            home=Path(environ["OMNIMEMBER_HOME"]).resolve() if environ.get("OMNIMEMBER_HOME") else default_home(),
            secret=environ.get("OMNIMEMBER_SECRET") or None,
            pool_min_size=int(number("OMNIMEMBER_POOL_MIN", defaults.pool_min_size)),
            pool_max_size=int(number("OMNIMEMBER_POOL_MAX", defaults.pool_max_size)),
            dev=_flag(environ.get("OMNIMEMBER_DEV")) or False,
            dev_role=environ.get("OMNIMEMBER_DEV_ROLE") or defaults.dev_role,
            graphql_ide=_flag(environ.get("OMNIMEMBER_GRAPHIQL")),
            introspection=_flag(environ.get("OMNIMEMBER_INTROSPECTION")),
            suggestions=_flag(environ.get("OMNIMEMBER_SUGGESTIONS")),
            rate_limit=number("OMNIMEMBER_RATE_LIMIT", defaults.rate_limit),
            phone_lookups=number("OMNIMEMBER_PHONE_LOOKUPS", defaults.phone_lookups),
            max_body=int(number("OMNIMEMBER_MAX_BODY", defaults.max_body)),
            pool_timeout=number("OMNIMEMBER_POOL_TIMEOUT", defaults.pool_timeout),
            statement_timeout=number("OMNIMEMBER_STATEMENT_TIMEOUT", defaults.statement_timeout),
            request_deadline=number("OMNIMEMBER_REQUEST_DEADLINE", defaults.request_deadline),
            header_timeout=number("OMNIMEMBER_HEADER_TIMEOUT", defaults.header_timeout),
            body_timeout=number("OMNIMEMBER_BODY_TIMEOUT", defaults.body_timeout),
            max_exports=int(number("OMNIMEMBER_MAX_EXPORTS", defaults.max_exports)),
            shutdown_timeout=number("OMNIMEMBER_SHUTDOWN_TIMEOUT", defaults.shutdown_timeout),
            metrics=_flag(environ.get("OMNIMEMBER_METRICS")) is not False,  # unset: on
            request_log=_flag(environ.get("OMNIMEMBER_REQUEST_LOG")) is not False,
            # The OpenTelemetry SDK reads its own OTEL_* variables; these two decide whether it is used.
            traces=bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            and not _flag(environ.get("OTEL_SDK_DISABLED")),
            traces_protocol=(
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or defaults.traces_protocol
            ),
            log_format=_log_format(environ.get("OMNIMEMBER_LOG_FORMAT") or defaults.log_format),
            trusted_documents=_one_of(
                "OMNIMEMBER_TRUSTED_DOCUMENTS",
                environ.get("OMNIMEMBER_TRUSTED_DOCUMENTS") or defaults.trusted_documents,
                TRUSTED_DOCUMENTS,
            ),
        )

    @property
    def ide_on(self) -> bool:
        return self.dev if self.graphql_ide is None else self.graphql_ide

    @property
    def introspection_on(self) -> bool:
        return self.dev if self.introspection is None else self.introspection

    @property
    def suggestions_on(self) -> bool:
        return self.dev if self.suggestions is None else self.suggestions

    def described(self) -> dict[str, str]:
        """Every setting with its effective value, secrets redacted (`omnimember config`)."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        values["database_url"] = (
            redacted(self.database_url)
            if self.database_url
            else (f"unset: the embedded PostgreSQL in {self.home / 'pgdata'}")
        )
        values["secret"] = "set (OMNIMEMBER_SECRET)" if self.secret else f"generated, kept in {self.home / 'secret'}"
        return {name: str(value) for name, value in values.items()}

    def phone_secret(self) -> bytes:
        """The phone hashing/encryption secret: OMNIMEMBER_SECRET, else one kept in the home directory.

        The generated secret suits a single machine; production sets OMNIMEMBER_SECRET so every
        process hashes phones alike (changing it orphans all stored phone hashes).
        """
        if self.secret:
            return self.secret.encode()
        path = self.home / "secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
