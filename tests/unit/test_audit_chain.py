"""The audit chain's pure core: sealing, the start head, verification, the
daily files' upkeep (mss_relay/audit/)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from mss_relay.audit.chain import Chain, Head, last_head, newest_head
from mss_relay.audit.rotation import keep_up, upkeep_delay
from mss_relay.audit.verification import BROKEN, INTACT, verify


def sealed_lines(stream: str, count: int, head: Head | None = None) -> list[str]:
    chain = Chain(stream, head or Head())
    return [chain(json.dumps({"ts": "t", "event": "e", "n": i})) + "\n" for i in range(count)]


def test_the_chain_is_what_the_documentation_says() -> None:
    # docs/audit-trail.md: SHA-256 of the previous chain's hex and the line
    # up to « , "chain": " », a third party's re-implementation.
    first, second = sealed_lines("w0", 2)
    for previous, line in (("", first), (json.loads(first)["chain"], second)):
        body = line[: line.rindex(', "chain": "')]
        expected = hashlib.sha256((previous + body).encode()).hexdigest()
        assert json.loads(line)["chain"] == expected
    assert json.loads(second)["seq"] == 2 and json.loads(second)["stream"] == "w0"


def test_the_start_head_is_the_streams_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    w0, w1 = sealed_lines("w0", 3), sealed_lines("w1", 2)
    path.write_text("".join([w0[0], w1[0], w0[1], w0[2], w1[1]]))
    assert last_head(path, "w0") == Head(3, json.loads(w0[2])["chain"])
    assert last_head(path, "cli") is None
    assert Head.later(None, Head(2, "a"), Head(5, "b")) == Head(5, "b")


def test_interleaved_streams_pass_and_a_gap_is_named(tmp_path: Path) -> None:
    w0, w1 = sealed_lines("w0", 4), sealed_lines("w1", 4)
    path = tmp_path / "log.jsonl"
    path.write_text("".join(x for pair in zip(w0, w1, strict=True) for x in pair))
    assert verify([path]).code == INTACT
    path.write_text("".join([w0[0], w1[0], w0[2], w0[3]]))  # w0's seq 2 lost
    verdict = verify([path])
    assert verdict.code == BROKEN and f"{path}:3 (flux w0, seq 3)" in verdict.message
    assert "log_recovered" in verdict.message  # the relay's own drops are named as a cause


def test_a_chain_going_on_in_a_later_gz_file(tmp_path: Path) -> None:
    lines = sealed_lines("w0", 6)
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    first.write_bytes(gzip.compress("".join(lines[:3]).encode()))
    second.write_text("".join(lines[3:]))
    assert verify([first, second]).message == "6 lignes, chaîne intacte"
    alone = verify([second])
    assert alone.code == INTACT and "n'est plus présent" in alone.starts[0]


@pytest.mark.parametrize("retention", [1, 183])
def test_keep_up_compresses_past_days_and_purges_old_ones(tmp_path: Path, retention: int) -> None:
    now = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))
    names = ["2026-06-01", "2026-05-31", "2026-05-30", "2025-11-30", "2025-11-29"]
    for name in names:
        (tmp_path / f"mss-relay-{name}.jsonl").write_text("{}\n")
    done = keep_up(tmp_path, retention, now)
    left = sorted(p.name for p in tmp_path.iterdir())
    if retention == 183:
        assert done.purged == 1 and done.compressed == 3
        assert "mss-relay-2025-11-29.jsonl" not in " ".join(left)
        assert "mss-relay-2025-11-30.jsonl.gz" in left
    else:
        assert done.purged == 3 and left[0] == "mss-relay-2026-05-31.jsonl.gz"
    assert "mss-relay-2026-06-01.jsonl" in left  # today's, as it is


def test_the_commands_reading_the_log_find_the_daily_files(tmp_path: Path) -> None:
    from mss_relay.logfiles import log_files

    for name in ("mss-relay-2026-05-31.jsonl.gz", "mss-relay-2026-06-01.jsonl"):
        (tmp_path / name).write_text("")
    link = tmp_path / "mss-relay.jsonl"
    link.symlink_to("mss-relay-2026-06-01.jsonl")
    assert [p.name for p in log_files(link)] == [
        "mss-relay-2026-05-31.jsonl.gz",
        "mss-relay-2026-06-01.jsonl",
    ]


def test_a_stream_first_seen_mid_chain_after_the_first_file_is_lines_missing(
    tmp_path: Path,
) -> None:
    # w1 writes in the second and third files; every w1 line of the second
    # is deleted: w1 then starts at seq 4 in the third, a file that follows
    # ones given, so its earlier lines were there (outside check, 1).
    w0, w1 = sealed_lines("w0", 6), sealed_lines("w1", 6)
    files = [tmp_path / f"{name}.jsonl" for name in "abc"]
    files[0].write_text("".join(w0[:2]))
    files[1].write_text("".join([w0[2], w0[3]]))  # w1[0:3] deleted from here
    files[2].write_text("".join([w0[4], w1[3], w0[5], *w1[4:]]))
    verdict = verify(files)
    assert verdict.code == BROKEN, verdict.message
    assert verdict.message.startswith(f"{files[2]}:2 (flux w1, seq 4): 3 ligne(s) manquante(s)")
    # A stream that starts at seq 1 in a later file (a worker added) is fine.
    files[1].write_text("".join([w0[2], *w1[:3], w0[3]]))
    assert verify(files).code == INTACT
    files[1].write_text("".join([w0[2], w0[3]]))
    files[2].write_text("".join([w0[4], *w1[:3], w0[5]]))
    assert verify(files).code == INTACT


def test_two_lines_swapped_are_out_of_order_not_missing(tmp_path: Path) -> None:
    w0 = sealed_lines("w0", 5)
    path = tmp_path / "log.jsonl"
    path.write_text("".join([w0[0], w0[2], w0[1], w0[3], w0[4]]))
    verdict = verify([path])
    assert verdict.code == BROKEN
    assert verdict.message.startswith(f"{path}:2 (flux w0, seq 3): ligne hors d'ordre")
    assert f"plus loin, {path}:3" in verdict.message and "manquante" not in verdict.message
    # Moved into the next file: the same.
    later = tmp_path / "later.jsonl"
    path.write_text("".join([w0[0], w0[2]]))
    later.write_text("".join([w0[1], *w0[3:]]))
    assert "hors d'ordre" in verify([path, later]).message
    # Really gone: missing.
    path.write_text("".join([w0[0], w0[2], *w0[3:]]))
    assert "1 ligne(s) manquante(s)" in verify([path]).message


def test_a_blank_line_is_a_break(tmp_path: Path) -> None:
    # The relay never writes one: a line emptied by hand (its content gone,
    # the seq of the next would show it only if it was not the last).
    w0 = sealed_lines("w0", 2)
    path = tmp_path / "log.jsonl"
    path.write_text("".join([w0[0], w0[1], "\n"]))
    verdict = verify([path])
    assert (
        verdict.code == BROKEN
        and verdict.message == f"{path}:3: ligne vide (le relais n'en écrit jamais)"
    )


def test_verify_names_the_streams_it_saw_and_warns_of_a_strange_one(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [*sealed_lines("cli", 1), *sealed_lines("w10", 1), *sealed_lines("w1", 1)]
    path.write_text("".join([*lines, *sealed_lines("w0", 1)]))
    verdict = verify([path])
    assert verdict.code == INTACT and verdict.streams_line() == "flux : w0, w1, w10, cli"
    assert verdict.warnings() == []
    # Lines forged as a new stream's pass the chain, but show.
    path.write_text("".join([*lines, *sealed_lines("w9", 1), *sealed_lines("admin", 1)]))
    verdict = verify([path])
    assert verdict.code == INTACT and verdict.streams_line() == "flux : w1, w9, w10, cli, admin"
    assert verdict.warnings() == [
        "attention : flux « admin » inattendu (le relais n'écrit que w0, w1... et cli)"
    ]


def test_a_compressed_day_keeps_the_files_mode(tmp_path: Path) -> None:
    now = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))
    day = tmp_path / "mss-relay-2026-05-31.jsonl"
    day.write_text("{}\n")
    day.chmod(0o640)
    before = os.umask(0o022)
    try:
        assert keep_up(tmp_path, 183, now).compressed == 1
    finally:
        os.umask(before)
    packed = tmp_path / "mss-relay-2026-05-31.jsonl.gz"
    assert stat.S_IMODE(packed.stat().st_mode) == 0o640
    assert gzip.decompress(packed.read_bytes()) == b"{}\n"


def test_the_old_plain_log_kept_is_purged_by_its_date(tmp_path: Path) -> None:
    # Kept as logrotate's dateext name when moving to daily rotation
    # (rotation.py, DailyFiles): purged past retention like a day's file.
    now = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))
    old, kept = "mss-relay.jsonl-2025112923", "mss-relay.jsonl-2025113000"
    for name in (old, kept, "mss-relay.jsonl-20251101.gz", "other.jsonl-2025112923"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "mss-relay-2025-11-29.jsonl.gz").write_bytes(gzip.compress(b""))
    done = keep_up(tmp_path, 183, now, link="mss-relay.jsonl")
    assert done.purged == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept, "other.jsonl-2025112923"]
    assert keep_up(tmp_path, 183, now).purged == 0  # without the link's name: none


@pytest.mark.parametrize(
    ("clock", "delay"),
    [
        ((12, 0, 0), 300),
        ((12, 5, 0), 3600),
        ((23, 6, 0), 3540),
        ((0, 4, 59), 1),
        ((23, 59, 0), 360),
    ],
)
def test_the_upkeep_runs_five_minutes_past_each_hour(
    clock: tuple[int, int, int], delay: int
) -> None:
    # docs/audit-trail.md: at start, then 00:05 (the day just ended), hourly.
    now = time.mktime((2026, 6, 1, *clock, 0, 0, -1))
    assert upkeep_delay(now) == delay


def test_the_start_head_is_found_in_the_newest_file_that_has_the_stream(tmp_path: Path) -> None:
    w0, w1 = sealed_lines("w0", 4), sealed_lines("w1", 2)
    today, packed, older = (tmp_path / n for n in ("c.jsonl", "b.jsonl.gz", "a.jsonl"))
    older.write_text("".join([w0[0], w1[0], w1[1]]))
    packed.write_bytes(gzip.compress("".join([w0[1], w0[2]]).encode()))
    missing = tmp_path / "not-yet.jsonl"  # today's file, not written yet
    newest_first = [missing, today, packed, older]
    today.write_text("")
    assert newest_head(newest_first, "w0") == Head(3, json.loads(w0[2])["chain"])
    assert newest_head(newest_first, "w1") == Head(2, json.loads(w1[1])["chain"])
    assert newest_head(newest_first, "w1", bound=3) is None
    today.write_text(w0[3])
    assert newest_head(newest_first, "w0") == Head(4, json.loads(w0[3])["chain"])


# --- audit_heads anchors (audit/anchors.py) --------------------------------


class _Log:
    """Sealed lines of several streams, made in the order a test writes them,
    and worker 0's anchors (stale: a stream's head as the state had it)."""

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}

    def line(self, stream: str) -> str:
        chain = self.chains.setdefault(stream, Chain(stream, Head()))
        return chain(json.dumps({"ts": "t", "event": "e"})) + "\n"

    def anchor(self, **stale: Head) -> str:
        heads = {name: chain.head for name, chain in self.chains.items()} | stale
        named = {name: {"seq": h.seq, "chain": h.chain} for name, h in heads.items()}
        body = {"ts": "t", "event": "audit_heads", "reason": "hourly", "heads": named}
        return self.chains.setdefault("w0", Chain("w0", Head()))(json.dumps(body)) + "\n"


def _write(tmp_path: Path, *days: list[str]) -> list[Path]:
    files = [tmp_path / f"day{n}.jsonl" for n in range(1, len(days) + 1)]
    for path, lines in zip(files, days, strict=True):
        path.write_text("".join(lines))
    return files


@pytest.mark.parametrize("anchored", [True, False])
def test_a_stream_idle_in_the_first_file_given_passes_thanks_to_an_anchor(
    tmp_path: Path, anchored: bool
) -> None:
    # w1 (or cli) wrote in day 1, deleted by retention, nothing in day 2,
    # then goes on in day 3: day 2's anchor says where it was.
    log = _Log()
    log.line("w0"), log.line("w1"), log.line("w1")  # day 1, gone
    day2 = [log.anchor() if anchored else log.line("w0"), log.line("w0")]
    day3 = [log.line("w0"), log.line("w1")]
    verdict = verify(_write(tmp_path, day2, day3))
    if anchored:
        assert verdict.code == INTACT, verdict.message
        assert verdict.message == "4 lignes, chaîne intacte" and verdict.streams == ["w0", "w1"]
    else:  # as before anchors: w1 first seen mid-chain in a later file
        assert verdict.code == BROKEN and "2 ligne(s) manquante(s)" in verdict.message


def test_an_anchor_naming_lines_not_seen_is_lines_missing(tmp_path: Path) -> None:
    log = _Log()
    day1 = [log.line("w0"), log.line("cli"), log.anchor()]
    deleted = log.line("cli")  # cli's line of day 2, deleted afterwards
    day2 = [log.line("w0"), log.anchor()]  # cli writes nothing more
    day3 = [log.anchor(), log.line("w0")]
    files = _write(tmp_path, day1, day2, day3)
    verdict = verify(files)
    assert verdict.code == BROKEN
    assert verdict.message.startswith(
        f"{files[1]}:2 (ancre audit_heads, flux cli au seq 2): 1 ligne(s) manquante(s)"
        f" avant celle-ci (seq 2 à 2, après {files[0]}:2)"
    ), verdict.message
    files = _write(tmp_path, day1, [deleted, *day2], day3)
    assert verify(files).code == INTACT
    # Deleted after the middle file's last anchor: the next file's says it;
    # the stream known from day 1's anchor alone (not seen in a line) too.
    log = _Log()
    log.line("cli")  # in a file gone
    day1 = [log.line("w0"), log.anchor()]
    day2 = [log.line("w0")]
    log.line("cli")  # deleted from day 2
    day3 = [log.anchor(), log.line("w0")]
    files = _write(tmp_path, day1, day2, day3)
    verdict = verify(files)
    assert verdict.code == BROKEN
    assert verdict.message.startswith(f"{files[2]}:1 (ancre audit_heads, flux cli au seq 2)")
    assert verdict.streams == ["w0"]  # cli named by anchors only: not seen


def test_stale_anchors_pass(tmp_path: Path) -> None:
    log = _Log()
    log.line("w1")
    saved = log.chains["w1"].head  # the head the state has, 10 s behind
    day1 = [log.line("w1"), log.line("w0"), log.anchor(w1=saved), log.line("w1")]
    day2 = [log.anchor(w1=saved), log.line("w1")]
    assert verify(_write(tmp_path, day1, day2)).code == INTACT
    # The first file's anchor may be older than the file's start: a stream
    # then starts further on than it says (its lines between in the file
    # gone), as a stream first seen in the first file may; later anchors of
    # that file raise what is known.
    log = _Log()
    log.line("w1")
    saved = log.chains["w1"].head
    log.line("w1")  # written in the file gone after its head was saved
    day1 = [log.anchor(w1=saved), log.anchor(), log.line("w0"), log.line("w1")]
    verdict = verify(_write(tmp_path, day1))
    assert verdict.code == INTACT, verdict.message
    log = _Log()
    log.line("w1")
    saved = log.chains["w1"].head
    log.line("w1")
    day1 = [log.anchor(w1=saved), log.line("w1")]
    verdict = verify(_write(tmp_path, day1))
    assert verdict.code == INTACT and "flux w1 : la chaîne commence" in verdict.starts[-1]


def test_a_stream_known_from_an_anchor_must_chain_from_it(tmp_path: Path) -> None:
    log = _Log()
    log.line("w1"), log.line("w1")  # in a file gone
    day1 = [log.line("w0")]
    day2 = [log.anchor()]
    forged = Chain("w1", Head(2, "0" * 64))(json.dumps({"event": "e"})) + "\n"
    files = _write(tmp_path, day1, [*day2, forged])
    verdict = verify(files)
    assert verdict.code == BROKEN and verdict.message.startswith(f"{files[1]}:2 (flux w1, seq 3)")
    assert "ligne modifiée" in verdict.message
    files = _write(tmp_path, day1, [*day2, log.line("w1")])
    assert verify(files).code == INTACT
    # A line further on than the anchor's head: the lines between missing
    # (seq 3, made above, and 4).
    log.line("w1")
    files = _write(tmp_path, day1, [*day2, log.line("w1")])
    verdict = verify(files)
    assert verdict.code == BROKEN and "2 ligne(s) manquante(s)" in verdict.message
    assert f"après {files[1]}:1" in verdict.message


def test_the_head_saved_is_the_last_line_written_not_one_still_queued(tmp_path: Path) -> None:
    # The state's copy of a head must never name a line not yet in the file
    # (an anchor built from it would then say lines are missing that only
    # come later): the writer tells the chain what it wrote, disk full or not.
    from mss_relay.log import LineWriter
    from tests.support.filesystems import fill, small_tmpfs
    from tests.unit.test_log_writer import DURING, lines_of, wait_for

    with small_tmpfs(tmp_path / "fs") as disk:
        path = disk / "log.jsonl"
        chain = Chain("w0", Head(41, "a" * 64))
        writer = LineWriter(path)
        writer.seal, writer.written = chain, chain.written
        try:
            assert chain.written_head == Head(41, "a" * 64)  # the start head
            writer.write(chain('{"event": "before"}'))
            wait_for(lambda: len(lines_of(path)) == 1)
            wait_for(lambda: chain.written_head == chain.head)
            before = chain.head
            filler = fill(disk)
            writer.write(chain(json.dumps({"event": "during", "pad": DURING})))
            wait_for(lambda: not writer.healthy)
            assert chain.head.seq == 43 and chain.written_head == before
            filler.unlink()
            wait_for(lambda: writer.healthy)
            # Then the writer's own log_recovered line, sealed too: the last.
            wait_for(lambda: chain.written_head == chain.head)
            assert chain.head.seq == 44
            last = json.loads(lines_of(path)[-1])
            assert last["event"] == "log_recovered" and chain.written_head.chain == last["chain"]
        finally:
            writer.close()
