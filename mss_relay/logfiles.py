"""The log file and its rotated copies, for the commands that read the log
back (why, report, audit verify): logrotate's numbered names (FILE.1, FILE.2.gz) and its
dateext names (FILE-20261201, FILE-20261201.gz, as contrib/logrotate sets)."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from mss_relay.audit.rotation import dated_files

_ROTATED = re.compile(r"\A\.(\d+)(\.gz)?\Z|\A-\d{8}(\d{2})?(\.gz)?\Z")
# What reading a rotated file can raise: unreadable, a truncated or corrupt
# archive. What came before in that file is kept.
READ_ERRORS = (OSError, EOFError, zlib.error)


def log_files(path: Path) -> list[Path]:
    """The log and its rotated copies beside it, oldest first. With
    log.rotate: daily, log.file is a link to today's file: the relay's dated
    files (audit/rotation.py), today's last."""
    if path.is_symlink():
        return dated_files(path.parent)
    return [*rotated_copies(path), *([path] if path.is_file() else [])]


def rotated_copies(path: Path) -> list[Path]:
    """logrotate's copies of the log beside it, oldest first (without it)."""
    rotated: list[tuple[tuple[int, str], Path]] = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            name = candidate.name
            if not name.startswith(path.name) or not candidate.is_file():
                continue
            match = _ROTATED.match(name[len(path.name) :])
            if match is None:
                continue
            if match.group(1) is not None:  # numbered: the higher, the older
                rotated.append(((1, f"{max(0, 10**9 - int(match.group(1))):010d}"), candidate))
            else:  # dated: the earlier, the older
                rotated.append(((0, name), candidate))
    return [p for _, p in sorted(rotated)]


def raw_lines(path: Path, problems: list[str]) -> Iterator[bytes]:
    """The lines of one file (gzip or not); a failure to read it is added to
    problems (one line each), never raised."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as stream:
            yield from stream
    except READ_ERRORS as error:
        problems.append(f"{path.name}: {type(error).__name__}: {error}")
