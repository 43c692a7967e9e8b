"""The relay's own daily rotation (log.rotate: daily).

Each writer writes to « DIR/mss-relay-YYYY-MM-DD.jsonl » (the local date, by
the system clock), switching at its first line of a new day, each on its own
(the files are O_APPEND: the workers need no coordination). log.file, in the
same directory, is kept a symbolic link to today's file (tail -F, and the
commands that read log.file). Worker 0 compresses the files of past days
(.gz) and deletes those past log.retention_days, logging « log_purged ».
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

PREFIX = "mss-relay-"
_DATED = re.compile(r"\Amss-relay-(\d{4})-(\d{2})-(\d{2})\.jsonl(\.gz)?\Z")
# After log.file's name: the old plain log kept when moving to daily
# rotation (DailyFiles._point_link), and logrotate's dateext copies of
# before (-YYYYMMDD, .gz): dated by their name, purged as the daily files.
_KEPT = re.compile(r"\A-(\d{4})(\d{2})(\d{2})(\d{2})?(\.gz)?\Z")
# A past day's file is compressed this long after midnight: a line written by
# another worker just before midnight has long reached its file by then.
SETTLE = 300.0


def today() -> date:
    """The local date, by the system clock (faketime moves it)."""
    return date(*time.localtime()[:3])


def dated_name(day: date) -> str:
    return f"{PREFIX}{day.isoformat()}.jsonl"


def day_of(path: Path) -> date | None:
    match = _DATED.match(path.name)
    if match is None:
        return None
    with contextlib.suppress(ValueError):
        return date(int(match[1]), int(match[2]), int(match[3]))
    return None


def kept_day(path: Path, link: str) -> date | None:
    """The date in the name of a copy of log.file (named `link`) kept beside."""
    if not path.name.startswith(link):
        return None
    match = _KEPT.match(path.name[len(link) :])
    if match is None:
        return None
    with contextlib.suppress(ValueError):
        return date(int(match[1]), int(match[2]), int(match[3]))
    return None


def upkeep_delay(now: float | None = None) -> float:
    """Seconds until the next upkeep: five minutes past the next local hour
    (00:05 is the first after a day's end, SETTLE after it)."""
    local = time.localtime(time.time() if now is None else now)
    into_hour = local.tm_min * 60 + local.tm_sec
    return float((SETTLE - into_hour) % 3600 or 3600)


def dated_files(directory: Path) -> list[Path]:
    """The relay's daily files there, oldest first (a day's .gz before its
    plain file, should both exist for a moment)."""
    found = []
    with contextlib.suppress(OSError):
        for candidate in directory.iterdir():
            day = day_of(candidate)
            if day is not None and candidate.is_file():
                found.append((day, not candidate.name.endswith(".gz"), candidate))
    return [path for *_, path in sorted(found)]


class DailyFiles:
    """Today's file for one writer (LineWriter asks before each batch)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.directory = link.parent
        self._day: date | None = None
        self._path = link

    def current(self) -> Path:
        day = today()
        if day != self._day:
            self._day = day
            self._path = self.directory / dated_name(day)
            self._point_link()
        return self._path

    def _point_link(self) -> None:
        # Replaced atomically (a reader following log.file never finds it
        # missing); two workers doing it at once point it at the same name.
        temporary = self.link.with_name(f".{self.link.name}.{os.getpid()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.link.is_file() and not self.link.is_symlink():
                # The log of an installation rotated by logrotate until now:
                # kept under logrotate's dateext name (the commands reading
                # the log find it there), never replaced by the link.
                kept = self.link.with_name(f"{self.link.name}-{time.strftime('%Y%m%d%H')}")
                with contextlib.suppress(FileNotFoundError):  # another worker was first
                    if not kept.exists():
                        os.rename(self.link, kept)
                if self.link.is_file() and not self.link.is_symlink():
                    return  # not moved: left as it is, the dated files written beside
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(self._path.name)
            os.replace(temporary, self.link)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()


@dataclass(frozen=True)
class Upkeep:
    compressed: int
    purged: int


def keep_up(
    directory: Path, retention_days: int, now: float | None = None, link: str | None = None
) -> Upkeep:
    """Compress past days' files, delete those older than retention_days
    (and the copies of log.file, named `link`, kept from before: by the date
    in their name). Blocking (run it in a thread)."""
    moment = time.time() if now is None else now
    local = time.localtime(moment)
    day = date(*local[:3])
    settled = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec >= SETTLE
    oldest = day - timedelta(days=retention_days)
    compressed = purged = 0
    for path in dated_files(directory):
        file_day = day_of(path)
        assert file_day is not None
        try:
            if file_day < oldest:
                path.unlink()
                purged += 1
            elif not path.name.endswith(".gz") and (
                file_day < day - timedelta(days=1) or (file_day < day and settled)
            ):
                _compress(path)
                compressed += 1
        except OSError:
            continue  # tried again at the next round
    if link is not None:
        purged += _purge_kept(directory, link, oldest)
    return Upkeep(compressed, purged)


def _purge_kept(directory: Path, link: str, oldest: date) -> int:
    purged = 0
    with contextlib.suppress(OSError):
        for candidate in directory.iterdir():
            day = kept_day(candidate, link)
            if day is not None and day < oldest and candidate.is_file():
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    purged += 1
    return purged


def _compress(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(f".{target.name}.part")
    with partial.open("wb") as raw:
        # The archive as readable as the day's file was, no more (umask
        # would make a 640 log 644); its owner too when that is possible.
        state = os.stat(path)
        os.fchmod(raw.fileno(), stat.S_IMODE(state.st_mode))
        if os.geteuid() == 0:
            os.fchown(raw.fileno(), state.st_uid, state.st_gid)
        if target.exists():
            # A line written late to a day already compressed: the archive
            # grows by a gzip member (gzip readers read them one after another).
            with target.open("rb") as before:
                shutil.copyfileobj(before, raw)
        with path.open("rb") as source, gzip.GzipFile(fileobj=raw, mode="wb") as sink:
            shutil.copyfileobj(source, sink)
    os.replace(partial, target)  # a whole archive or none
    path.unlink()
