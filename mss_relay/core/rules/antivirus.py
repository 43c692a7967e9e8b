"""The antivirus's answer (clamd, at the end of DATA) turned into a verdict:
a signature found refuses the message; no answer (clamd unreachable, too
slow, an error) refuses it for now, unless antivirus.on_error: accept."""

from __future__ import annotations

from mss_relay.core.facts import ScanResult
from mss_relay.core.reply import SCANNER_UNAVAILABLE, malware_found, signature_name
from mss_relay.core.verdict import Verdict


def no_malware(scan: ScanResult, accept_unscanned: bool) -> Verdict | None:
    """RFC 3463 §3.8 (X.7.1) for a message a signature matched, §3.4
    (X.3.0, 451) when it could not be scanned: the client retries, and the
    message is never sent on unscanned unless the operator said so."""
    if scan.found is not None:
        name = signature_name(scan.found)
        return Verdict.reject(malware_found(name), rule="malware", reason=f"found {name}")
    if scan.error is not None and not accept_unscanned:
        return Verdict.tempfail(
            SCANNER_UNAVAILABLE, rule="antivirus_unavailable", reason=scan.error
        )
    return None
