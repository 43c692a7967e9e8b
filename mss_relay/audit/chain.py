"""Each log line sealed to the one before it, per stream (docs/audit-trail.md).

A stream is one writer's sequence of lines: « w0 », « w1 »... for the relay's
worker processes, « cli » for the lines the commands log. Each line gets three
fields, last, in this order:

    {..., "stream": "w0", "seq": 42, "chain": "<64 hex>"}

and chain = SHA-256( previous chain, as its 64 ASCII hex characters (nothing
for a stream's first line, seq 1)  +  the line's UTF-8 bytes from its « { »
up to, not including, the text « , "chain": " » ), in lowercase hex. The
order of the lines of one stream is fixed by seq; the lines of several
streams interleave in the file in no fixed order (concurrent writers).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# What separates the sealed part of a line from its chain, and ends it.
CHAIN_MARK = ', "chain": "'
END = '"}'
_SEQ = '"seq": '
# How far back the start looks in the log file for its stream's last line
# (past that, the state's head is taken: see Head).
TAIL_SCAN = 16 * 1024**2
_BLOCK = 64 * 1024
# How many files, newest first, the start looks through for its stream's
# last line: the state's head is at most SAVE_EVERY old (trail.py), so only
# the newest file the stream wrote to matters; a stream silent longer than
# this many files has its head in the state long since.
START_FILES = 8


def stream_name(worker: int) -> str:
    return f"w{worker}"


def seal(previous: str, sealed: str) -> str:
    """The chain of a line whose sealed part is `sealed` (text up to CHAIN_MARK)."""
    return hashlib.sha256((previous + sealed).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """The last line of a stream: its seq and chain (0 and "": no line yet)."""

    seq: int = 0
    chain: str = ""

    @staticmethod
    def later(*heads: Head | None) -> Head:
        """The most advanced: the log file's last line and the state's copy
        may each be ahead of the other (a crash since the last save; an
        external rotation that left the current file without the stream)."""
        return max((h for h in heads if h is not None), key=lambda h: h.seq, default=Head())


class Chain:
    """The finish step (mss_relay/log.py) that seals each line of one stream.

    Called on the event loop for the lines rendered there, and from the log
    writer's thread for its own (log_recovered): a lock keeps seq and chain
    one sequence (uncontended, some 50 ns)."""

    def __init__(self, stream: str, head: Head) -> None:
        self.stream = stream
        self._suffix = f', "stream": {json.dumps(stream)}, "seq": '
        self._seq = head.seq
        self._chain = head.chain
        self._lock = threading.Lock()
        # The last line the writer wrote (LineWriter.written): what is saved
        # to the state, so that a head read there never names a line not yet
        # in the file (an audit_heads anchor relies on it: verification.py).
        self._written = head

    @property
    def head(self) -> Head:
        with self._lock:
            return Head(self._seq, self._chain)

    @property
    def written_head(self) -> Head:
        return self._written

    def written(self, line: str) -> None:
        """Told by the writer's thread, after each write, of the last line
        written (one per batch: its tail parsed, no JSON decoding)."""
        text = line.rstrip("\n")
        mark = text.rfind(CHAIN_MARK)
        at = text.rfind(_SEQ, 0, mark)
        if mark < 0 or at < 0:
            return
        try:
            seq = int(text[at + len(_SEQ) : mark])
        except ValueError:
            return
        # One attribute replaced by a whole Head: read on the event loop
        # without a lock (the GIL makes the swap atomic).
        self._written = Head(seq, text[mark + len(CHAIN_MARK) : -len(END)])

    def __call__(self, line: str) -> str:
        # A rendered line is one JSON object: « {...} ».
        body = line[:-1]
        with self._lock:
            self._seq += 1
            sealed = f"{body}{self._suffix}{self._seq}"
            self._chain = seal(self._chain, sealed)
            return f"{sealed}{CHAIN_MARK}{self._chain}{END}"


def parse_head(raw: bytes, stream: str) -> Head | None:
    """The seq and chain of a line of that stream; None for another's, or no
    sealed line at all."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(line, dict) or line.get("stream") != stream:
        return None
    seq, chain = line.get("seq"), line.get("chain")
    if isinstance(seq, int) and isinstance(chain, str):
        return Head(seq, chain)
    return None


def last_head(path: Path, stream: str, limit: int = TAIL_SCAN) -> Head | None:
    """The last line of `stream` in the file (read backwards, up to `limit`
    bytes from its end), or None. Blocking: at start only."""
    needle = f'"stream": {json.dumps(stream)}, "seq": '.encode()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        end = os.fstat(fd).st_size
        position, carry = end, b""
        while position > 0 and end - position < limit:
            size = min(_BLOCK, position)
            position -= size
            block = os.pread(fd, size, position) + carry
            lines = block.split(b"\n")
            # The first piece may be the end of a line that starts before.
            carry = lines[0] if position > 0 else b""
            for raw in reversed(lines if position == 0 else lines[1:]):
                if needle in raw:
                    head = parse_head(raw, stream)
                    if head is not None:
                        return head
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


def newest_head(files: Iterable[Path], stream: str, bound: int = START_FILES) -> Head | None:
    """The stream's last line in the newest of `files` (newest first, .gz or
    not) that has one, looking at `bound` files at most. Blocking: at start.

    After a crash the state's head may be behind the log, and the file the
    writer goes on with may hold nothing yet (a new day, or log.file moved
    aside by logrotate while the relay was down): the last line is found in
    the file before (outside check, 3)."""
    for count, path in enumerate(files):
        if count >= bound:
            break
        head = (
            _last_in_archive(path, stream) if path.name.endswith(".gz") else last_head(path, stream)
        )
        if head is not None:
            return head
    return None


def _last_in_archive(path: Path, stream: str) -> Head | None:
    # A gzip file cannot be read backwards: read through (a past day's file,
    # once, at start).
    needle = f'"stream": {json.dumps(stream)}, "seq": '.encode()
    found = None
    try:
        with gzip.open(path, "rb") as lines:
            for raw in lines:
                if needle in raw:
                    found = parse_head(raw, stream) or found
    except (OSError, EOFError, ValueError):
        pass  # a corrupt or cut archive: what was read before counts
    return found
