"""Settings: the only place that reads the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# As root the embedded server's package opens every parent of its data directory to others
# (o+rx), so root gets a system location instead of the working directory.
ROOT_HOME = Path("/var/lib/omnimember")
USER_HOME = Path(".omnimember")


def default_home() -> Path:
    return ROOT_HOME if os.geteuid() == 0 else USER_HOME.resolve()


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one omnimember process (see the README's configuration table)."""

    database_url: str | None
    home: Path
    secret: str | None
    pool_min_size: int = 2
    pool_max_size: int = 10
    graphql_ide: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            database_url=environ.get("DATABASE_URL") or None,
            home=Path(environ["OMNIMEMBER_HOME"]).resolve() if environ.get("OMNIMEMBER_HOME") else default_home(),
            secret=environ.get("OMNIMEMBER_SECRET") or None,
            pool_min_size=int(environ.get("OMNIMEMBER_POOL_MIN", "2")),
            pool_max_size=int(environ.get("OMNIMEMBER_POOL_MAX", "10")),
            graphql_ide=environ.get("OMNIMEMBER_GRAPHIQL", "1") not in ("0", "false", "no"),
        )

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
