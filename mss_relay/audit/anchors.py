"""The « audit_heads » anchor: a line of worker 0's stream naming the head
(seq, chain) of every stream the state knows (table log_heads), so that
verify can tell lines missing from a stream that wrote nothing in the files
given before (docs/audit-trail.md, « Anchors »).

    {..., "event": "audit_heads", "reason": "start",
     "heads": {"cli": {"seq": 3, "chain": "<64 hex>"}, "w0": {...}},
     "stream": "w0", "seq": 812, "chain": "<64 hex>"}

A head in the table was saved after its line was written (the state's copy
follows the writer: chain.py, Chain.written), so every line of a stream
with a seq up to the anchor's came before the anchor in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mss_relay.audit.chain import Head

EVENT = "audit_heads"
# The stream that writes them (worker 0): an anchor in another stream is
# none (a forged stream cannot vouch for the others).
WRITER = "w0"
# Why worker 0 wrote one: its start, a reopening (SIGUSR1: logrotate), the
# hourly round (the first of a day is in the day's new file).
START, REOPEN, HOURLY = "start", "reopen", "hourly"


def anchor_fields(heads: Mapping[str, Head]) -> dict[str, Any]:
    return {"heads": {name: {"seq": h.seq, "chain": h.chain} for name, h in sorted(heads.items())}}


def anchor_heads(line: Mapping[str, Any]) -> dict[str, Head] | str | None:
    """The heads an anchor line names; None for any other line; a text for
    an anchor that cannot be read (the relay never writes one)."""
    if line.get("event") != EVENT or line.get("stream") != WRITER:
        return None
    heads = line.get("heads")
    if not isinstance(heads, dict):
        return "ancre illisible (champ heads absent ou invalide)"
    named: dict[str, Head] = {}
    for name, head in heads.items():
        seq = head.get("seq") if isinstance(head, dict) else None
        chain = head.get("chain") if isinstance(head, dict) else None
        if not isinstance(seq, int) or not isinstance(chain, str) or seq < 1:
            return f"ancre illisible (tête du flux « {name} » invalide)"
        named[name] = Head(seq, chain)
    return named
