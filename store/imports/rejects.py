"""The reject file: a CSV of the rows not loaded, with their line, error code, reason and text.

Rejects of a chunk are written and flushed before the chunk commits, and dropped again if it does
not (`mark` / `undo`); a resumed import keeps those of the lines already committed and writes on.
So the file always lists exactly the rejected rows of the committed chunks, once each.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from store.imports.rows import Reject

HEADER = ("line", "code", "reason", "record")


class RejectFile:
    def __init__(self, path: Path, keep_through: int = 0) -> None:
        """Start the file afresh, keeping the rejects of lines up to ``keep_through`` (a resume)."""
        self.path = path
        earlier = path.with_name(path.name + ".earlier")
        if keep_through and path.exists():
            path.replace(earlier)
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(HEADER)
        self.count = 0
        if keep_through and earlier.exists():
            with earlier.open(encoding="utf-8", newline="") as source:
                for row in csv.reader(source):
                    if row and row[0].isdigit() and int(row[0]) <= keep_through:
                        self._writer.writerow(row)
                        self.count += 1
            earlier.unlink()
        self._file.flush()

    def mark(self) -> tuple[int, int]:
        return self._file.tell(), self.count

    def undo(self, mark: tuple[int, int]) -> None:
        """Drop what was written since ``mark`` (the chunk did not commit)."""
        position, self.count = mark
        self._file.seek(position)
        self._file.truncate()

    def write(self, rejects: Iterable[Reject]) -> None:
        for reject in rejects:
            self._writer.writerow((reject.line, reject.code, reject.reason, reject.text))
            self.count += 1
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close it; a file that lists no row is removed (no file: nothing was rejected)."""
        self._file.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)
