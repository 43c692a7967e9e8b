"""The antivirus's pure parts: clamd's replies read (inspect/antivirus.py),
the signature name as a reply quotes it, and the verdicts of the rule
(core/rules/antivirus.py) through the policy."""

from __future__ import annotations

import pytest

from mss_relay.core.facts import ScanResult
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.reply import SIGNATURE_NAME_LIMIT, ascii_text, signature_name
from mss_relay.core.verdict import Action
from mss_relay.inspect.antivirus import parse_reply


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        (b"stream: OK\0", ScanResult()),
        (b"stream: OK", ScanResult()),
        (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", ScanResult(found="Win.Test.EICAR_HDB-1")),
        (b"stream: Xyz.UNOFFICIAL FOUND", ScanResult(found="Xyz.UNOFFICIAL")),
        (b"stream:  FOUND", ScanResult(found="?")),
        (
            b"INSTREAM size limit exceeded. ERROR",
            ScanResult(error="clamd: INSTREAM size limit exceeded. ERROR"),
        ),
        (
            b"stream: Can't allocate memory ERROR",
            ScanResult(error="clamd: stream: Can't allocate memory ERROR"),
        ),
        # Not clamd's « stream: » answer: never taken for a verdict.
        (b"Eicar FOUND", ScanResult(error="clamd: Eicar FOUND")),
        (b"OK", ScanResult(error="clamd: OK")),
        (b"", ScanResult(error="clamd: empty reply")),
        (b"stream: \xff\x01 ERROR", ScanResult(error="clamd: stream: ?? ERROR")),
    ],
)
def test_clamd_replies(raw: bytes, result: ScanResult) -> None:
    assert parse_reply(raw) == result


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Win.Test.EICAR_HDB-1", "Win.Test.EICAR_HDB-1"),
        ("MssRelay.Test.Pattern.UNOFFICIAL", "MssRelay.Test.Pattern.UNOFFICIAL"),
        ("Doc.Macro:Agent-1 (x)", "Doc.Macro:Agent-1__x_"),
        ("Nom\r\n250 OK", "Nom__250_OK"),
        ("Signé«»", "Sign___"),
        ("", "?"),
        ("A" * 500, "A" * SIGNATURE_NAME_LIMIT),
    ],
)
def test_signature_names_are_printable_ascii_and_bounded(name: str, shown: str) -> None:
    assert signature_name(name) == shown


POLICY = Policy(Limits(1, 2, 3), BalDirectory(()))
ACCEPTING = Policy(Limits(1, 2, 3), BalDirectory(()), accept_unscanned=True)


@pytest.mark.parametrize(
    ("policy", "scan", "action", "rule", "reply"),
    [
        (POLICY, ScanResult(), Action.ACCEPT, "antivirus", None),
        (ACCEPTING, ScanResult(), Action.ACCEPT, "antivirus", None),
        (
            POLICY,
            ScanResult(found="Xyz.UNOFFICIAL"),
            Action.REJECT,
            "malware",
            "550 5.7.1 Message refuse : contenu malveillant detecte (Xyz.UNOFFICIAL)",
        ),
        # on_error: accept is about errors only: a signature found is refused.
        (
            ACCEPTING,
            ScanResult(found="Xyz"),
            Action.REJECT,
            "malware",
            "550 5.7.1 Message refuse : contenu malveillant detecte (Xyz)",
        ),
        (
            POLICY,
            ScanResult(error="no verdict within 30s"),
            Action.TEMPFAIL,
            "antivirus_unavailable",
            "451 4.3.0 Analyse antivirus indisponible, reessayez plus tard",
        ),
        (ACCEPTING, ScanResult(error="no verdict within 30s"), Action.ACCEPT, "antivirus", None),
    ],
)
def test_the_verdicts(
    policy: Policy, scan: ScanResult, action: Action, rule: str, reply: str | None
) -> None:
    verdict = policy.evaluate_scan(scan)
    assert (verdict.action, verdict.rule) == (action, rule)
    assert (ascii_text(str(verdict.reply)) if verdict.reply else None) == reply
    if scan.error is not None:
        assert scan.error in verdict.reason  # the log says why, the client never
