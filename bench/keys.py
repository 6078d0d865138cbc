"""Access control in the HTTP benchmarks (bench/profile_read.py, bench/points.py): the same scenarios
against the same data, served once with keys off and once with keys on.

- keys off: `omnimember serve` in development mode (OMNIMEMBER_DEV=1), key-less requests from
  loopback acting as OMNIMEMBER_DEV_ROLE over every brand;
- keys on: production mode, every request with `Authorization: Bearer <token>` of a key made with
  `omnimember keys create` for the same role, scoped to the bench's brands.

The role is a masked one (frontend, campaign or partner) in both modes, so both take the same read
path (roles with clear personal data take the general path and audit every read: another
comparison). Both modes lift the per-key rate limit (OMNIMEMBER_RATE_LIMIT, 5,000 requests a second
by default, which development mode's principal has too) out of the way: the limiter still runs on
every request, it just never answers 429.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import Scenario, WrkDriver

RATE_LIMIT = "1000000"  # requests a second per key: never reached, so the limiter never refuses
TOKEN_SHOWN = "$TOKEN"  # noqa: S105 (what printed commands show instead of the token)


class KeysError(RuntimeError):
    """No key could be made."""


@dataclass(frozen=True, slots=True)
class Mode:
    key: str  # "off" or "on"
    title: str  # for the report
    env: dict[str, str]  # the server's environment
    headers: dict[str, str]  # sent with every request

    @property
    def keys_on(self) -> bool:
        return self.key == "on"


def create_key(omnimember: Path, env: Mapping[str, str], role: str, scope: Sequence[str], name: str) -> str:
    """The token of a new key (`omnimember keys create`, which prints it alone on stdout); `scope`:
    its flags, e.g. ["--brand", "teahouse"] or ["--group", "demo"]."""
    argv = [str(omnimember), "keys", "create", "--role", role, *scope, "--name", name]
    shown = shlex.join(["omnimember", *argv[1:]])
    print(f"$ {shown}", flush=True)
    done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, check=False)
    token = done.stdout.strip()
    if done.returncode != 0 or not token or "\n" in token:
        raise KeysError(f"`{shown}` failed ({done.returncode}): {done.stdout}{done.stderr}")
    return token


def modes(env: Mapping[str, str], role: str, token: str) -> list[Mode]:
    """Keys off, then keys on: the server's environment and the request headers of each."""
    base = {name: value for name, value in env.items() if name not in ("OMNIMEMBER_DEV", "OMNIMEMBER_DEV_ROLE")}
    base["OMNIMEMBER_RATE_LIMIT"] = RATE_LIMIT
    off = Mode(
        "off",
        f"keys off (development mode, key-less as `{role}`)",
        {**base, "OMNIMEMBER_DEV": "1", "OMNIMEMBER_DEV_ROLE": role},
        {},
    )
    on = Mode("on", f"keys on (a `{role}` key, bearer token)", base, {"Authorization": f"Bearer {token}"})
    return [off, on]


@dataclass(slots=True)
class KeyedWrk(WrkDriver):
    """WrkDriver whose requests carry `headers` too (wrk -H: the Lua scripts format requests with
    wrk.headers, which -H fills)."""

    headers: dict[str, str] = field(default_factory=dict)

    # WrkDriver.x(self, ...), not super(): slots dataclasses break the zero-argument form before 3.14.
    def _argv(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> list[str]:
        argv = WrkDriver._argv(self, base_url, scenario, connections, seconds)
        return [argv[0], *header_flags(self.headers), *argv[1:]]

    def command(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> str:
        return hide_token(WrkDriver.command(self, base_url, scenario, connections, seconds))


def header_flags(headers: Mapping[str, str]) -> list[str]:
    return [flag for name, value in headers.items() for flag in ("-H", f"{name}: {value}")]


def hide_token(command: str) -> str:
    """A printed command with `Bearer $TOKEN` for the token."""
    start = command.find("Bearer ")
    if start < 0:
        return command
    start += len("Bearer ")
    end = start
    while end < len(command) and command[end] not in "'\" ":
        end += 1
    return command[:start] + TOKEN_SHOWN + command[end:]
