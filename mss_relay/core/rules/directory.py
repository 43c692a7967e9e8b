"""Annuaire Santé: an outgoing professional recipient is a BAL of the
extraction (mss-relay directory import), with directory.mode refuse."""

from __future__ import annotations

from mss_relay.core.directory import DirectoryMode
from mss_relay.core.facts import RcptFacts
from mss_relay.core.reply import DIRECTORY_UNAVAILABLE, NOT_IN_DIRECTORY
from mss_relay.core.verdict import Verdict


def listed_in_directory(facts: RcptFacts, mode: DirectoryMode) -> Verdict | None:
    """None when not looked up (mode off, a patient, also_accept), listed,
    or unlisted with mode warn (the session logs `directory: unlisted`).
    Fail closed: a database that cannot answer is a 451, in warn mode too,
    never an unchecked accept."""
    answer = facts.directory
    if answer is None or mode is DirectoryMode.OFF:
        return None
    if answer.listed is None:
        return Verdict.tempfail(
            DIRECTORY_UNAVAILABLE,
            rule="directory",
            reason=f"directory unavailable ({answer.unavailable})",
        )
    if answer.listed or mode is DirectoryMode.WARN:
        return None
    return Verdict.reject(
        NOT_IN_DIRECTORY.with_text(f"<{facts.recipient}> : adresse absente de l'Annuaire Santé"),
        rule="directory",
        reason="recipient not in the Annuaire Santé extraction",
    )
