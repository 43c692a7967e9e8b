"""mss-relay why: one transaction's story, read back from the audit log.

A refusal quotes `(id TXID)` (a transaction's id), or the session's id when it
came before any transaction (connection, EHLO, AUTH); accepted mail quotes
its txid too. Given that id, or a message's Message-ID, this prints in order
the decisions taken and the outcome, for a person at the helpdesk.

The log is JSON lines (mss_relay/log.py); rotated files beside it
(FILE.1, FILE.2.gz...) are read too, oldest first.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mss_relay.logfiles import log_files, raw_lines

# The words of the story, in the two languages a helpdesk may want.
_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "mail": "MAIL FROM",
        "rcpt": "RCPT TO",
        "data": "fin du DATA",
        "sign": "signature DKIM",
        "antivirus": "analyse antivirus",
        "xdm": "paquets IHE-XDM et en-têtes X-MSS",
        "accept": "accepté",
        "reject": "refusé",
        "tempfail": "refusé pour le moment",
        "rule": "règle",
        "reason": "motif",
        "reply": "réponse",
        "sender": "expéditeur",
        "recipient": "destinataire",
        "outcome": "Résultat",
        "upstream": "réponse de l'opérateur",
        "delivered": "transmis à l'opérateur",
        "rejected": "refusé",
        "tempfailed": "échec temporaire (le client réessaiera)",
        "permfailed": "refusé par l'opérateur",
        "abandoned": "abandonné par le client",
        "accepted": "accepté (Postfix le remet)",
        "transaction": "Transaction",
        "session": "Session",
        "client": "client",
        "user": "utilisateur",
        "listener": "écoute",
        "auth": "authentification",
        "unknown": "aucune ligne du journal pour {id} (dans {files})",
        "no_log": "pas de fichier journal {file}",
        "upstream_step": "opérateur",
        "timeout": "délai dépassé",
        "internal_error": "erreur interne",
        "connection_refused": "connexion refusée",
        "auth_lockout": "verrouillage AUTH",
        "disconnect": "déconnexion",
        "message_id": "Message-ID",
    },
    "en": {
        "mail": "MAIL FROM",
        "rcpt": "RCPT TO",
        "data": "end of DATA",
        "sign": "DKIM signature",
        "antivirus": "antivirus scan",
        "xdm": "IHE-XDM packages and X-MSS fields",
        "accept": "accepted",
        "reject": "refused",
        "tempfail": "refused for now",
        "rule": "rule",
        "reason": "reason",
        "reply": "reply",
        "sender": "sender",
        "recipient": "recipient",
        "outcome": "Outcome",
        "upstream": "operator's reply",
        "delivered": "passed on to the operator",
        "rejected": "refused",
        "tempfailed": "temporary failure (the client will retry)",
        "permfailed": "refused by the operator",
        "abandoned": "abandoned by the client",
        "accepted": "accepted (Postfix delivers it)",
        "transaction": "Transaction",
        "session": "Session",
        "client": "client",
        "user": "user",
        "listener": "listener",
        "auth": "authentication",
        "unknown": "no log line for {id} (in {files})",
        "no_log": "no log file {file}",
        "upstream_step": "operator",
        "timeout": "timed out",
        "internal_error": "internal error",
        "connection_refused": "connection refused",
        "auth_lockout": "AUTH lockout",
        "disconnect": "disconnected",
        "message_id": "Message-ID",
    },
}
LANGUAGES = tuple(_WORDS)


def records(streams: Iterable[Iterable[bytes]], needles: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON lines that contain one of the needles (a cheap filter before
    parsing); lines that are not JSON (a cut last line) are skipped."""
    wanted = [n.encode() for n in needles]
    for stream in streams:
        for raw in stream:
            if not any(n in raw for n in wanted):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>").strip()


def is_message_id(ref: str) -> bool:
    return "@" in ref


def matching(lines: Iterable[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """The lines of a transaction (txid) or of a session (session id)."""
    return [ln for ln in lines if ref in (ln.get("txid"), ln.get("session"))]


def txids_of(lines: Iterable[dict[str, Any]], message_id: str) -> list[str]:
    """The transactions that carried this Message-ID, in order."""
    found: list[str] = []
    bare = _bare(message_id)
    for line in lines:
        logged = line.get("message_id")
        txid = line.get("txid")
        if isinstance(logged, str) and _bare(logged) == bare and txid and txid not in found:
            found.append(txid)
    return found


def _when(line: dict[str, Any]) -> str:
    ts = str(line.get("ts", "?"))
    return ts.replace("T", " ").removesuffix("Z") + " UTC" if ts.endswith("Z") else ts


def _details(line: dict[str, Any], words: dict[str, str], keys: Iterable[str]) -> str:
    parts = []
    for key in keys:
        value = line.get(key)
        if value not in (None, "", []):
            parts.append(f"{words.get(key, key)}: {value}")
    return "; ".join(parts)


def describe(line: dict[str, Any], words: dict[str, str]) -> str:
    """One line of the story."""
    event = line.get("event")
    when = _when(line)
    if event == "decision":
        stage = words.get(str(line.get("stage")), str(line.get("stage")))
        verdict = words.get(str(line.get("verdict")), str(line.get("verdict")))
        rest = _details(line, words, ("sender", "recipient", "rule", "reason", "reply"))
        return f"{when}  [{stage}] {verdict}" + (f" - {rest}" if rest else "")
    if event == "transaction":
        outcome = words.get(str(line.get("outcome")), str(line.get("outcome")))
        rest = _details(line, words, ("rule", "reply", "upstream"))
        return f"{when}  {words['outcome']}: {outcome}" + (f" - {rest}" if rest else "")
    if event == "upstream":
        stage = words.get(str(line.get("stage")), str(line.get("stage")))
        rest = _details(line, words, ("recipient", "upstream"))
        return f"{when}  [{words['upstream_step']}, {stage}] {line.get('outcome')} - {rest}"
    if event == "auth":
        rest = _details(line, words, ("user", "reason"))
        return f"{when}  [{words['auth']}] {line.get('result')}" + (f" - {rest}" if rest else "")
    label = words.get(str(event), str(event))
    rest = _details(line, words, ("phase", "rule", "reason", "error", "locked"))
    return f"{when}  [{label}]" + (f" {rest}" if rest else "")


def _header(ref: str, lines: list[dict[str, Any]], words: dict[str, str]) -> str:
    first = lines[0]
    kind = words["session"] if first.get("session") == ref else words["transaction"]
    context = _details(first, words, ("session", "listener", "client", "user"))
    outcome = next((ln for ln in lines if ln.get("event") == "transaction"), None)
    if outcome is not None:
        context = _details(outcome | first, words, ("session", "listener", "client", "user"))
        if outcome.get("message_id"):
            context += f"; {words['message_id']}: {outcome['message_id']}"
    return f"{kind} {ref}" + (f" ({context})" if context else "")


def story(ref: str, lines: list[dict[str, Any]], language: str = "fr") -> list[str]:
    """The lines to print for one transaction or session."""
    words = _WORDS[language]
    return [_header(ref, lines, words), *("  " + describe(ln, words) for ln in lines)]


def why(
    ref: str,
    log: Path | None,
    language: str = "fr",
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
) -> int:
    """Print the story of ref (a txid, a session id or a Message-ID) from the
    log file (None: standard input, as from journalctl); 1 when nothing found."""
    words = _WORDS[language]
    files = log_files(log) if log is not None else []
    if log is not None and not files:
        print(f"mss-relay: why: {words['no_log'].format(file=log)}", file=err)
        return 1
    problems: list[str] = []

    def read(needles: list[str]) -> list[dict[str, Any]]:
        if log is None:
            return list(records([sys.stdin.buffer], needles))
        found: list[dict[str, Any]] = []
        for path in files:
            found.extend(records([raw_lines(path, problems)], needles))
        return found

    if is_message_id(ref):
        bare = _bare(ref)
        if log is None:  # standard input is read once: keep every line of interest
            everything = read([""])
            refs = txids_of(everything, bare)
            groups = [(txid, matching(everything, txid)) for txid in refs]
        else:
            refs = txids_of(read([json.dumps(bare)[1:-1]]), bare)
            lines = read(refs) if refs else []
            groups = [(txid, matching(lines, txid)) for txid in refs]
    else:
        ref = ref.strip().upper().removeprefix("(ID ").removesuffix(")")
        groups = [(ref, matching(read([ref]), ref))]
    groups = [(r, g) for r, g in groups if g]
    for problem in dict.fromkeys(problems):  # each file once, however many reads
        print(f"mss-relay: why: {problem}", file=err)
    if not groups:
        shown = ", ".join(str(p) for p in files) if log is not None else "stdin"
        print("mss-relay: why: " + words["unknown"].format(id=ref, files=shown or log), file=err)
        return 1
    for i, (txid, lines) in enumerate(groups):
        if i:
            print(file=out)
        print("\n".join(story(txid, lines, language)), file=out)
    return 0
