"""What the relay found out about a message's authenticity (DKIM, RFC 6376).

Computed by the front end (it needs DNS), judged by the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from mss_relay.core.addresses import normalize_domain

PASS = "pass"
FAIL = "fail"
NONE = "none"
PERMERROR = "permerror"
TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class DkimCheck:
    """One signature's outcome (or « none » when the message has none)."""

    result: str  # pass | fail | none | permerror | temperror (RFC 8601 §2.7.1)
    domain: str | None = None
    selector: str | None = None
    algorithm: str | None = None

    def __str__(self) -> str:
        if self.domain is None:
            return self.result
        return f"{self.result} d={self.domain} s={self.selector} a={self.algorithm}"

    def aligned_with(self, author_domain: str) -> bool:
        """d= is the author's domain or a parent of it (relaxed alignment, RFC 7489 §3.1.1)."""
        if self.domain is None:
            return False
        d, author = normalize_domain(self.domain), normalize_domain(author_domain)
        return author == d or author.endswith("." + d)
