"""Alembic environment: online migrations only, against the URL `store.migrate` passes in."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from store.tables import metadata
from store.urls import sqlalchemy_url

config = context.config


def _url() -> str:
    # `omnimember migrate` sets the option; the plain alembic CLI falls back to DATABASE_URL.
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL (or use `omnimember migrate`)")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
