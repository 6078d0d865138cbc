"""Traces (issue 16): OpenTelemetry when an OTLP endpoint is set, off and free otherwise.

With OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, every HTTP request is
a server span with a child span per SQL statement, exported over OTLP/HTTP (api.otel does it).
Without it nothing of OpenTelemetry is imported and nothing wraps the app: this module is all that
runs. The SDK reads its own OTEL_* variables (service name, sampler, batch delays, headers);
docs/observability.md lists them. The packages are the optional extra ``otel``.
"""

from __future__ import annotations

from starlette.middleware import Middleware

from api.settings import Settings

INSTALL = "pip install 'omnimember[otel]'"
PROTOCOL = "http/protobuf"  # the one OTLP transport omnimember exports with


class TracingUnavailable(RuntimeError):
    """Traces are asked for but cannot start (the extra is missing, or an unsupported protocol)."""


def unavailable(settings: Settings) -> str | None:
    """What keeps the asked-for traces from starting, said in a sentence (the CLI prints it and stops),
    or None: traces off, or ready."""
    if not settings.traces:
        return None
    if settings.traces_protocol.strip().lower() != PROTOCOL:
        return (
            f"OTEL_EXPORTER_OTLP_PROTOCOL is {settings.traces_protocol!r}: omnimember exports traces over "
            f"{PROTOCOL} only (an OpenTelemetry Collector takes it on port 4318); set it to {PROTOCOL} or unset it"
        )
    try:
        import api.otel  # noqa: F401 - what the extra installs, imported only now that traces are on
    except ImportError as error:
        return (
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({error.name} is missing): "
            f"{INSTALL}, or unset the variable"
        )
    return None


def tracing_middleware(settings: Settings) -> list[Middleware]:
    """The app's outermost middleware when traces are on, else none."""
    if not settings.traces:
        return []
    problem = unavailable(settings)
    if problem is not None:
        raise TracingUnavailable(problem)
    from api.otel import Traced, provider

    return [Middleware(Traced, provider=provider())]
