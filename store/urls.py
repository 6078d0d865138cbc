"""One database URL, two spellings: libpq's for psycopg, SQLAlchemy's for alembic."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

_PREFIXES = (
    "postgresql+psycopg://",
    "postgresql+psycopg2://",
    "postgres://",
    "postgresql://",
)


def libpq_url(url: str) -> str:
    for prefix in _PREFIXES:
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('://')[0]}://…")


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + libpq_url(url)[len("postgresql://") :]


def redacted(url: str) -> str:
    """The URL with its password replaced, for logs and `omnimember config`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def with_database(url: str, database: str) -> str:
    """The same server, another database: ``postgresql://h/db?x`` → ``postgresql://h/<database>?x``."""
    parts = urlsplit(libpq_url(url))
    return urlunsplit(parts._replace(path="/" + database))
