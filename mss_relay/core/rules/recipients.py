from __future__ import annotations

from collections.abc import Container

from mss_relay.core.addresses import (
    domain_of,
    in_trust_space,
    is_patient_domain,
    is_valid_ins_matricule,
    split_address,
)
from mss_relay.core.facts import RcptFacts
from mss_relay.core.reply import INVALID_INS, NOT_TRUST_SPACE, TOO_MANY_RCPTS
from mss_relay.core.verdict import Verdict


def trust_space(facts: RcptFacts, whitelist: Container[str] | None = None) -> Verdict | None:
    """Seeds 000 §2 and 003: mail goes only into the MSSanté trust space. With
    the ANS liste blanche (whitelist: its normalized domains), that is its
    domains exactly; without it, the approximation « ends in mssante.fr »."""
    domain = domain_of(facts.recipient)
    if whitelist is not None:
        if domain in whitelist:
            return None
        return Verdict.reject(
            NOT_TRUST_SPACE.with_text(
                f"<{facts.recipient}> : domaine absent de la liste blanche MSSante"
            ),
            rule="trust_space",
            reason="recipient domain not in the liste blanche",
        )
    if in_trust_space(domain):
        return None
    return Verdict.reject(
        NOT_TRUST_SPACE.with_text(
            f"<{facts.recipient}> : destinataire hors de l'espace de confiance MSSanté"
            " (adresses en mssante.fr uniquement)"
        ),
        rule="trust_space",
        reason="recipient domain outside mssante.fr",
    )


def patient_matricule(facts: RcptFacts) -> Verdict | None:
    """Seeds 001 and 004: a patient's address is <matricule INS>@patient.mssante.fr.
    A mistyped matricule sends health data to nobody, or to somebody else."""
    local, domain = split_address(facts.recipient)
    if not is_patient_domain(domain) or is_valid_ins_matricule(local):
        return None
    return Verdict.reject(
        INVALID_INS.with_text(
            f"<{facts.recipient}> : matricule INS invalide (15 caractères,"
            " clé de contrôle incluse, sans espace ni point)"
        ),
        rule="patient_matricule",
        reason="local part is not a valid INS matricule",
    )


def max_recipients(facts: RcptFacts, limit: int) -> Verdict | None:
    """RFC 5321 §4.5.3.1.10: a server may refuse recipients beyond its limit, temporarily."""
    if facts.accepted_so_far < limit:
        return None
    return Verdict.tempfail(
        TOO_MANY_RCPTS.with_text(
            f"Trop de destinataires pour ce message (maximum {limit}),"
            " envoyez le reste dans un autre message"
        ),
        rule="max_recipients",
        reason=f"{facts.accepted_so_far} >= {limit}",
    )
