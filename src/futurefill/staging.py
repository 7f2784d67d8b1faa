"""Writing a set of files so that a directory holds all of the new ones or none of them.

A run that writes several files (a benchmark's report, a training checkpoint) and fails or is
interrupted half-way must not leave new files beside stale ones: :func:`staged` has them written
into a staging directory inside the target, and moves them into place only once all are written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["staged"]


@contextlib.contextmanager
def staged(directory: str | os.PathLike, last: Sequence[str] = ()) -> Iterator[Path]:
    """A staging directory inside ``directory`` (created if missing) to write files into.

    When the block ends without an error, every file in it is moved into ``directory`` with
    :func:`os.replace` (atomic per file: same filesystem), the names in ``last`` after the others
    (a manifest that says the rest is complete); on an error the staged files are removed and
    ``directory`` is as it was.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
        yield Path(staging)
        files = sorted(Path(staging).iterdir(), key=lambda p: (p.name in last, p.name))
        for path in files:
            os.replace(path, directory / path.name)
