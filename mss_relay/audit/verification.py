"""« mss-relay audit verify FILE... »: the chain of each stream checked, line
by line, over the files given in rotation order (oldest first, .gz or not).

The first problem found is named (file, line number, stream, seq) and ends
the check: what follows a break cannot be trusted to the same degree.
Exit codes: 0 intact; 1 broken (a line deleted, altered, reordered, added,
truncated, a file missing or out of order, a line that is no sealed line);
2 a file given cannot be read at all (missing, not readable, a corrupt
archive), so nothing could be concluded about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mss_relay.audit.chain import CHAIN_MARK, END, seal
from mss_relay.logfiles import raw_lines

INTACT, BROKEN, UNREADABLE = 0, 1, 2


@dataclass(slots=True)
class _Seen:
    seq: int
    chain: str
    where: str  # file:line of that line


@dataclass
class Verdict:
    code: int
    lines: int
    message: str
    # Streams whose first line given follows lines no longer there.
    starts: list[str] = field(default_factory=list)

    def text(self) -> list[str]:
        return [*self.starts, self.message]


def _sealed(raw: bytes) -> tuple[str, int, str, str] | str:
    """(stream, seq, chain, sealed part) of one line, or what is wrong with it."""
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
    return stream, seq, chain, text[:cut]


def verify(files: Iterable[Path]) -> Verdict:
    streams: dict[str, _Seen] = {}
    starts: list[str] = []
    count = 0
    for path in files:
        if not path.is_file():
            return Verdict(UNREADABLE, count, f"{path}: fichier absent ou illisible", starts)
        problems: list[str] = []
        number = 0
        for number, raw in enumerate(raw_lines(path, problems), start=1):
            if raw in (b"\n", b""):
                continue
            where = f"{path}:{number}"
            parsed = _sealed(raw)
            if isinstance(parsed, str):
                return Verdict(BROKEN, count, f"{where}: {parsed}", starts)
            stream, seq, chain, sealed = parsed
            at = f"{where} (flux {stream}, seq {seq})"
            seen = streams.get(stream)
            if seen is None:
                previous = ""
                if seq != 1:
                    # Its predecessors are in a file no longer given (retention).
                    starts.append(
                        f"flux {stream} : la chaîne commence à {where} (seq {seq}),"
                        " dans la suite d'un fichier qui n'est plus présent"
                    )
                    streams[stream] = _Seen(seq, chain, where)
                    count += 1
                    continue
            elif seq == seen.seq + 1:
                previous = seen.chain
            else:
                return Verdict(BROKEN, count, _order(at, seq, seen), starts)
            if seal(previous, sealed) != chain:
                return Verdict(
                    BROKEN, count, f"{at}: ligne modifiée (son chaînage ne correspond pas)", starts
                )
            streams[stream] = _Seen(seq, chain, where)
            count += 1
        if problems:
            # Nothing read: not a log at all (2); a truncated archive: what
            # came before was checked, the rest is missing (1).
            code = UNREADABLE if number == 0 else BROKEN
            return Verdict(code, count, f"{path}: lecture interrompue : {problems[0]}", starts)
    return Verdict(INTACT, count, f"{count} lignes, chaîne intacte", starts)


def _order(at: str, seq: int, seen: _Seen) -> str:
    if seq > seen.seq + 1:
        missing = seq - seen.seq - 1
        return (
            f"{at}: {missing} ligne(s) manquante(s) avant celle-ci (seq {seen.seq + 1}"
            f" à {seq - 1}, après {seen.where}) : supprimées, un fichier manquant au milieu,"
            " ou des lignes que le relais n'a pas pu écrire (log_recovered, champ dropped)"
        )
    return (
        f"{at}: ligne hors d'ordre (la précédente du flux, {seen.where}, avait le seq"
        f" {seen.seq}) : lignes déplacées, ou fichiers donnés dans le désordre"
    )
