"""mss-relay why on log files: the rotated ones beside the log, oldest first."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from mss_relay.why import log_files, why


def _line(**fields: object) -> bytes:
    return json.dumps({"ts": "2026-01-02T03:04:05.678Z", "level": "info", **fields}).encode()


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    log = tmp_path / "relay.jsonl"
    mail = _line(event="decision", stage="mail", txid="AB12", verdict="accept", session="S1")
    with gzip.open(tmp_path / "relay.jsonl.2.gz", "wb") as old:
        old.write(mail + b"\n")
    (tmp_path / "relay.jsonl.1").write_bytes(
        _line(event="decision", stage="rcpt", txid="AB12", verdict="reject", rule="trust_space")
        + b"\nnot json\n"
    )
    log.write_bytes(
        _line(event="transaction", txid="AB12", outcome="rejected", message_id="<m@x>") + b"\n"
    )
    (tmp_path / "relay.jsonl.bak").write_text("ignored")
    assert log_files(log) == [tmp_path / "relay.jsonl.2.gz", tmp_path / "relay.jsonl.1", log]
    for ref in ("ab12", "m@x", "<m@x>"):
        out, err = io.StringIO(), io.StringIO()
        assert why(ref, log, "en", out, err) == 0, err.getvalue()
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("Transaction AB12")
        assert ["[MAIL FROM]" in lines[1], "[RCPT TO] refused" in lines[2]] == [True, True]
        assert "Outcome: refused" in lines[3]
    out, err = io.StringIO(), io.StringIO()
    assert why("FFFF", log, "en", out, err) == 1
    assert out.getvalue() == "" and err.getvalue().startswith(
        "mss-relay: why: no log line for FFFF"
    )
