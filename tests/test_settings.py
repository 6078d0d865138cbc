"""Settings: read from the environment once, described with secrets redacted (`omnimember config`)."""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings


def test_the_environment_sets_every_setting() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:s3cret@db.internal:5432/omnimember",
            "OMNIMEMBER_HOME": "/srv/om",
            "OMNIMEMBER_MAX_BODY": "2048",
            "OMNIMEMBER_POOL_TIMEOUT": "1.5",
            "OMNIMEMBER_MAX_EXPORTS": "2",
            "OMNIMEMBER_GRAPHIQL": "0",
        }
    )
    assert (settings.max_body, settings.pool_timeout, settings.max_exports) == (2048, 1.5, 2)
    assert settings.graphql_ide is False
    assert settings.home == Path("/srv/om")


def test_described_settings_never_show_a_secret() -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://app:s3cret@db.internal:5432/omnimember", "OMNIMEMBER_SECRET": "k" * 40}
    )
    described = settings.described()
    assert described["database_url"] == "postgresql://app:***@db.internal:5432/omnimember"
    assert described["secret"] == "set (OMNIMEMBER_SECRET)"
    assert "s3cret" not in str(described)
    assert "k" * 40 not in str(described)
    assert set(described) >= {"request_deadline", "statement_timeout", "header_timeout", "max_exports"}


def test_without_a_database_url_the_embedded_one_is_named() -> None:
    described = Settings.from_env({"OMNIMEMBER_HOME": "/srv/om"}).described()
    assert described["database_url"] == "unset: the embedded PostgreSQL in /srv/om/pgdata"
    assert described["secret"] == "generated, kept in /srv/om/secret"
