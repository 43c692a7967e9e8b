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


def test_dateext_files_are_read_and_a_broken_archive_is_one_line(tmp_path: Path) -> None:
    # contrib/logrotate names the rotated files FILE-YYYYMMDD.gz (dateext).
    log = tmp_path / "relay.jsonl"
    with gzip.open(tmp_path / "relay.jsonl-20261101.gz", "wb") as old:
        old.write(_line(event="decision", stage="mail", txid="CD34", verdict="accept") + b"\n")
    whole = gzip.compress(_line(event="decision", stage="rcpt", txid="CD34", verdict="accept"))
    (tmp_path / "relay.jsonl-20261115.gz").write_bytes(whole[: len(whole) // 2])  # cut
    log.write_bytes(_line(event="transaction", txid="CD34", outcome="delivered") + b"\n")
    out, err = io.StringIO(), io.StringIO()
    assert why("CD34", log, "en", out, err) == 0
    lines = out.getvalue().splitlines()
    assert "[MAIL FROM]" in lines[1] and "Outcome: " in lines[-1]
    problems = err.getvalue().splitlines()
    assert len(problems) == 1 and problems[0].startswith(
        "mss-relay: why: relay.jsonl-20261115.gz: "
    ), problems


def test_a_missing_log_file_is_named(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert why("AB12", tmp_path / "nothing.jsonl", "en", out, err) == 1
    assert err.getvalue() == f"mss-relay: why: no log file {tmp_path / 'nothing.jsonl'}\n"
