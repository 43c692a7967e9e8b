"""inbound.require_operator_certificate: the server delivering for a domain
is one of that domain's operators, by its TLS client certificate.

Issue 16: the ANS liste blanche gives, for each domain of the trust space,
the subject DN of each operator server allowed to deliver for it. The
envelope sender's domain must be listed (sender_trust_space, which runs
first, refuses it otherwise) and the certificate the client presented
(verified against tls.client_ca by the TLS layer) must carry one of its DNs,
compared in normalize_dn's form. The null sender (an operator's bounce or
report) names no domain: its certificate must be that of some listed operator.
"""

from __future__ import annotations

from mss_relay.core.addresses import domain_of
from mss_relay.core.facts import MailFacts
from mss_relay.core.operator import OperatorList, normalize_dn
from mss_relay.core.reply import NOT_AN_OPERATOR
from mss_relay.core.verdict import Verdict

RULE = "operator_certificate"


def _refused(domain: str | None, why: str, reason: str) -> Verdict:
    whose = f" du domaine {domain}" if domain else ""
    return Verdict.reject(
        NOT_AN_OPERATOR.with_text(f"{NOT_AN_OPERATOR.text}{whose} ({why})"),
        rule=RULE,
        reason=reason,
    )


def operator_certificate(facts: MailFacts, operators: OperatorList | None) -> Verdict | None:
    """At MAIL on the incoming side, when required. The DN is not sent back
    (the log has it): the operator knows its own certificate."""
    domain = domain_of(facts.sender) if facts.sender else None
    if facts.session.peer_dn is None:
        return _refused(domain, "aucun certificat client présenté", "no client certificate")
    dn = normalize_dn(facts.session.peer_dn)
    if operators is None:  # config.py requires trust_space.whitelist: never here
        return _refused(domain, "liste blanche indisponible", "no liste blanche")
    if domain is None:
        if operators.is_operator(dn):
            return None
        return _refused(
            None,
            "certificat absent de la liste blanche MSSante",
            "null sender: DN of no listed operator",
        )
    if dn in operators.operator_dns(domain):
        return None
    return _refused(
        domain,
        "certificat non inscrit pour ce domaine dans la liste blanche MSSante",
        "DN not listed for the sender domain",
    )
