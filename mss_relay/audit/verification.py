"""« mss-relay audit verify FILE... »: the chain of each stream checked, line
by line, over the files given in rotation order (oldest first, .gz or not).

The first problem found is named (file, line number, stream, seq) and ends
the check: what follows a break cannot be trusted to the same degree.
Exit codes: 0 intact; 1 broken (a line deleted, altered, reordered, added,
truncated, a file missing or out of order, a line that is no sealed line,
a blank line, a stream first seen mid-chain after the first file with no
anchor naming it before, an audit_heads anchor naming lines not seen);
2 a file given cannot be read at all (missing, not readable, a corrupt
archive), so nothing could be concluded about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mss_relay.audit.anchors import EVENT, anchor_heads
from mss_relay.audit.chain import CHAIN_MARK, END, Head, seal
from mss_relay.logfiles import raw_lines

INTACT, BROKEN, UNREADABLE = 0, 1, 2


@dataclass(slots=True)
class _Seen:
    seq: int
    chain: str
    where: str  # file:line of that line, or of the anchor that named it
    # Known from an anchor only, no line of the stream seen yet.
    anchored: bool = False
    # Named by an anchor of the first file given, no line seen yet: lines
    # after that head may be in the file before, gone (the anchor's heads
    # can be SAVE_EVERY old), so while in that file the stream may still
    # start further on, as a stream first seen there may.
    floor: bool = False


# The streams the relay writes (audit/chain.py): a worker's, the commands'.
_RELAY_STREAM = re.compile(r"\Aw(0|[1-9][0-9]*)\Z|\Acli\Z")


@dataclass
class Verdict:
    code: int
    lines: int
    message: str
    # Streams whose first line given follows lines no longer there.
    starts: list[str] = field(default_factory=list)
    # Every stream seen, in the order of streams_line (an auditor sees a
    # stream that should not be there: lines forged as a new stream's).
    streams: list[str] = field(default_factory=list)

    def streams_line(self) -> str | None:
        return f"flux : {', '.join(self.streams)}" if self.streams else None

    def warnings(self) -> list[str]:
        return [
            f"attention : flux « {name} » inattendu (le relais n'écrit que w0, w1... et cli)"
            for name in self.streams
            if not _RELAY_STREAM.match(name)
        ]


def _stream_order(name: str) -> tuple[int, int, str]:
    # w0, w1, ... w10 by number, then cli, then anything else.
    if _RELAY_STREAM.match(name) and name != "cli":
        return (0, int(name[1:]), "")
    return (1, 0, "") if name == "cli" else (2, 0, name)


def _sealed(raw: bytes) -> tuple[str, int, str, str, dict[str, Head] | None] | str:
    """(stream, seq, chain, sealed part, the heads it names if it is an
    anchor) of one line, or what is wrong with it."""
    if not raw.endswith(b"\n"):
        return "ligne tronquée (pas de fin de ligne)"
    try:
        text = raw[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return "ligne illisible (pas de l'UTF-8)"
    cut = text.rfind(CHAIN_MARK)
    if cut < 0 or not text.endswith(END):
        return "ligne sans chaînage (pas de champ chain à la fin)"
    try:
        line = json.loads(text)
    except ValueError:
        return "ligne illisible (pas du JSON)"
    stream, seq, chain = (line.get(k) for k in ("stream", "seq", "chain"))
    if not isinstance(stream, str) or not isinstance(seq, int) or not isinstance(chain, str):
        return "ligne sans chaînage (stream, seq ou chain absent)"
    heads = anchor_heads(line)
    if isinstance(heads, str):
        return heads
    return stream, seq, chain, text[:cut], heads


def _lines(files: list[Path], problems: list[str]) -> Iterator[tuple[int, Path, int, bytes]]:
    """(index of the file, file, 1-based line number, raw line) of every line."""
    for index, path in enumerate(files):
        for number, raw in enumerate(raw_lines(path, problems), start=1):
            yield index, path, number, raw


def verify(given: Iterable[Path]) -> Verdict:
    files = list(given)
    streams: dict[str, _Seen] = {}
    starts: list[str] = []
    count = 0

    def verdict(code: int, message: str) -> Verdict:
        seen = [name for name, known in streams.items() if not known.anchored]
        return Verdict(code, count, message, starts, sorted(seen, key=_stream_order))

    for index, path in enumerate(files):
        if not path.is_file():
            return verdict(UNREADABLE, f"{path}: fichier absent ou illisible")
        problems: list[str] = []
        number = 0
        for number, raw in enumerate(raw_lines(path, problems), start=1):
            where = f"{path}:{number}"
            if raw == b"\n":
                # The relay never writes one (whole JSON lines only): it was
                # made afterwards, as a line emptied by hand would be.
                return verdict(BROKEN, f"{where}: ligne vide (le relais n'en écrit jamais)")
            parsed = _sealed(raw)
            if isinstance(parsed, str):
                return verdict(BROKEN, f"{where}: {parsed}")
            stream, seq, chain, sealed, heads = parsed
            at = f"{where} (flux {stream}, seq {seq})"
            seen = streams.get(stream)
            if seen is not None and seen.floor and index == 0 and seq > seen.seq + 1:
                seen = None  # starts further on than its anchor: as unseen
            previous: str | None
            if seen is None:
                previous = ""
                if seq != 1 and index == 0:
                    # Its predecessors are in a file no longer given
                    # (retention): only the lines after it check it.
                    starts.append(
                        f"flux {stream} : la chaîne commence à {where} (seq {seq}),"
                        " dans la suite d'un fichier qui n'est plus présent"
                    )
                    previous = None
                elif seq != 1:
                    # Only the first file given may follow files gone: here
                    # the stream's earlier lines were in the files given.
                    streams[stream] = _Seen(seq, chain, where)
                    return verdict(BROKEN, _absent(at, seq, files[0]))
            elif seq == seen.seq + 1:
                previous = seen.chain
            else:
                later = None
                if seq > seen.seq + 1:  # the line expected moved further, or gone?
                    later = _later(files, index, number, stream, seen.seq + 1, seq)
                return verdict(BROKEN, _order(at, seq, seen, later))
            if previous is not None and seal(previous, sealed) != chain:
                streams[stream] = _Seen(seq, chain, where)
                return verdict(BROKEN, f"{at}: ligne modifiée (son chaînage ne correspond pas)")
            streams[stream] = _Seen(seq, chain, where)
            count += 1
            if heads is not None:
                broken = _anchored(streams, heads, where, index, files, number)
                if broken is not None:
                    return verdict(BROKEN, broken)
        if problems:
            # Nothing read: not a log at all (2); a truncated archive: what
            # came before was checked, the rest is missing (1).
            code = UNREADABLE if number == 0 else BROKEN
            return verdict(code, f"{path}: lecture interrompue : {problems[0]}")
    return verdict(INTACT, f"{count} lignes, chaîne intacte")


def _anchored(
    streams: dict[str, _Seen],
    heads: dict[str, Head],
    where: str,
    index: int,
    files: list[Path],
    number: int,
) -> str | None:
    """An anchor's heads against the streams known: a head further on than
    the stream's last line seen names lines missing (every line up to it
    was written before the anchor); one behind or equal is stale; a stream
    not known yet is known from it."""
    for name, head in heads.items():
        known = streams.get(name)
        lenient = known is not None and known.floor and index == 0
        if known is None or (lenient and head.seq > known.seq):
            streams[name] = _Seen(head.seq, head.chain, where, anchored=True, floor=index == 0)
        elif head.seq > known.seq:
            at = f"{where} (ancre {EVENT}, flux {name} au seq {head.seq})"
            later = _later(files, index, number, name, known.seq + 1, head.seq + 1)
            return _order(at, head.seq + 1, known, later)
    return None


def _later(
    files: list[Path], index: int, number: int, stream: str, low: int, high: int
) -> str | None:
    """Where, after (file index, line number), a line of `stream` with a seq
    in [low, high) is: the line expected was moved further, not deleted.
    Read again only once a break is found."""
    for at_index, path, at_number, raw in _lines(files[index:], []):
        if at_index == 0 and at_number <= number:
            continue
        parsed = _sealed(raw)
        if not isinstance(parsed, str) and parsed[0] == stream and low <= parsed[1] < high:
            return f"{path}:{at_number}"
    return None


def _absent(at: str, seq: int, first: Path) -> str:
    return (
        f"{at}: {seq - 1} ligne(s) manquante(s) avant celle-ci (seq 1 à {seq - 1}) : le flux"
        f" n'est dans aucun fichier donné avant ; seul le premier ({first}) peut suivre des"
        " fichiers qui ne sont plus là. Lignes supprimées, ou le flux n'a rien écrit dans"
        " les fichiers donnés avant : donnez aussi celui de sa ligne précédente"
    )


def _order(at: str, seq: int, seen: _Seen, later: str | None) -> str:
    if seq > seen.seq + 1 and later is None:
        missing = seq - seen.seq - 1
        return (
            f"{at}: {missing} ligne(s) manquante(s) avant celle-ci (seq {seen.seq + 1}"
            f" à {seq - 1}, après {seen.where}) : supprimées, un fichier manquant au milieu,"
            " ou des lignes que le relais n'a pas pu écrire (log_recovered, champ dropped)"
        )
    if later is not None:
        return (
            f"{at}: ligne hors d'ordre (la précédente du flux, {seen.where}, avait le seq"
            f" {seen.seq} ; la ligne attendue est plus loin, {later}) : lignes déplacées,"
            " ou fichiers donnés dans le désordre"
        )
    return (
        f"{at}: ligne hors d'ordre (la précédente du flux, {seen.where}, avait le seq"
        f" {seen.seq}) : lignes déplacées, ou fichiers donnés dans le désordre"
    )
