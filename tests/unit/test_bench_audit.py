"""bench/audit_cost.py: each finish step is timed on the very lines the relay
gave it, and the check that the relay with pseudonyms off wrote INS in clear
(and the one with them on, none) counts only INS in clear."""

from __future__ import annotations

import json

from bench.audit_cost import clear_ins_lines, unsealed
from bench.state_cost import patient
from mss_relay.audit.chain import Chain, Head
from mss_relay.pseudonym import Pseudonyms


def _line(**fields: object) -> str:
    return json.dumps({"ts": "2026-11-23T10:00:00.000Z", "level": "info", **fields})


def test_unsealed_gives_back_the_line_the_chain_was_given() -> None:
    chain = Chain("w0", Head())
    rendered = _line(event="transaction", reply='250 2.0.0 Ok: "stream": no')
    assert unsealed(chain(rendered)) == rendered
    assert unsealed(rendered) is None  # not sealed: not replayed


def test_clear_ins_lines_counts_clear_ins_not_pseudonyms() -> None:
    pseudonyms = Pseudonyms(b"k" * 32)
    clear = [_line(event="transaction", recipients=[patient(i)]) for i in range(200)]
    assert clear_ins_lines(clear) == 200
    masked = [pseudonyms.mask(line) for line in clear]
    # A pseudonym made only of digits (16 of them) must not pass for an INS.
    masked.append(_line(recipients=["ins:1234567890123456@patient.mssante.fr"]))
    masked.append(_line(sender="dr.martin@chu-b.mssante.fr"))
    assert clear_ins_lines(masked) == 0
