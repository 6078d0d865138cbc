"""The wheel that `pip install omnimember` builds holds every module and data file the service needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "schema", "resolvers", "store", "tagquery", "demo", "migrations")


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    # Built from the tracked files alone: an editable install's egg-info in the checkout lists every
    # file and hides a package missing from pyproject.toml (as store.access once was).
    source = tmp_path / "source"
    source.mkdir()
    git = shutil.which("git")
    assert git is not None
    tracked = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("omnimember-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "node_modules" not in path.parts
    }
    assert sources - shipped == set(), "modules missing from the wheel"
    data = {"schema/schema.graphql", "migrations/script.py.mako"}
    data |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "api/graphiql/dist").iterdir()}
    assert data - shipped == set(), "data files missing from the wheel"
