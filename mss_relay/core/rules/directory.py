"""Annuaire Santé: an outgoing professional recipient is a BAL of the
extraction (mss-relay directory import), with directory.mode refuse."""

from __future__ import annotations

from mss_relay.core.directory import DirectoryMode
from mss_relay.core.facts import RcptFacts
from mss_relay.core.reply import DIRECTORY_UNAVAILABLE, NOT_IN_DIRECTORY
from mss_relay.core.verdict import Verdict


def listed_in_directory(facts: RcptFacts, mode: DirectoryMode) -> Verdict | None:
    """None when not looked up (mode off, a patient, also_accept), listed,
    or with mode warn (the session logs `directory: unlisted` or
    `unavailable`): warn never refuses, so an answer missing changes
    nothing. Fail closed with refuse: a database that cannot answer is a
    451, never an unchecked accept."""
    answer = facts.directory
    if answer is None or mode is not DirectoryMode.REFUSE:
        return None
    if answer.listed is None:
        return Verdict.tempfail(
            DIRECTORY_UNAVAILABLE,
            rule="directory",
            reason=f"directory unavailable ({answer.unavailable})",
        )
    if answer.listed:
        return None
    return Verdict.reject(
        NOT_IN_DIRECTORY.with_text(f"<{facts.recipient}> : adresse absente de l'Annuaire Santé"),
        rule="directory",
        reason="recipient not in the Annuaire Santé extraction",
    )
