"""The tamper-evident log (issue 17, parts 4 and 5): each line sealed to the
one before it in its stream (w0, w1, cli), checked by « mss-relay audit
verify »; the chain continues across rotation and restarts; the relay's
own daily files, compressed and purged past log.retention_days."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Pki, Stack, base_config, two_sided
from tests.e2e.test_lifecycle import LIBFAKETIME
from tests.support.mail import connect, make_message, send
from tests.support.processes import ROOT, Relay, Upstream, wait_for

DR = "jean.dupont@ch-exemple.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mss_relay", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def verify(*files: Path) -> subprocess.CompletedProcess[str]:
    return run("audit", "verify", *map(str, files))


def sends(relay: Relay, upstream: Upstream, pki: Pki, count: int, to: str = DEST) -> None:
    for _ in range(count):
        with connect(Stack(relay, upstream, pki)) as client:
            _, (code, _) = send(client, DR, [to], make_message(sender=DR, to=to))
            assert code == 250


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def two_workers_log(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Path:
    """A real log: two workers, patient mail, an administrative close by the
    CLI in the middle, a clean stop."""
    tmp = tmp_path_factory.mktemp("trail")
    with two_sided(tmp, pki, password_hashes, workers=2) as (relay, operator, _):
        assert len(relay.wait_event("started", count=2)) == 2
        sends(relay, operator, pki, 8, to=PATIENT)
        closed = run("conversations", "close", DR, PATIENT, config=relay.config_path)
        assert closed.returncode == 0, closed.stderr
        sends(relay, operator, pki, 8)
        relay.wait_event("transaction", count=16)
        relay.stop()
        assert relay.wait_event("stopped", count=2)
    return relay.log_path


def test_an_intact_log_of_two_workers_and_the_cli_passes(two_workers_log: Path) -> None:
    every = lines(two_workers_log)
    assert {e["stream"] for e in every} == {"w0", "w1", "cli"}
    assert {e["event"] for e in every if e["stream"] == "cli"} == {"conversation_closed"}
    done = verify(two_workers_log)
    assert done.returncode == 0, done.stderr
    # The verdict alone on standard output; the streams seen on standard error.
    assert done.stdout == f"{len(every)} lignes, chaîne intacte\n"
    assert done.stderr.splitlines() == ["flux : w0, w1, cli"]


def _tampered(log: Path, tmp: Path, change: str) -> tuple[Path, int]:
    """A copy of the log changed as named; the 1-based line where verify
    must stop."""
    raw = log.read_bytes().splitlines(keepends=True)
    w0 = [i for i, line in enumerate(raw) if b'"stream": "w0"' in line]
    at = w0[len(w0) // 2]
    if change == "delete":
        del raw[at]
        stop = w0[len(w0) // 2 + 1]  # the next w0 line, one line earlier now
    elif change == "alter":
        raw[at] = raw[at].replace(b'"level": "info"', b'"level": "infO"', 1)
        stop = at + 1
    elif change == "swap":
        following = w0[len(w0) // 2 + 1]
        raw[at], raw[following] = raw[following], raw[at]
        stop = at + 1
    else:  # truncate: the last line loses its end
        raw[-1] = raw[-1][:-10]
        stop = len(raw)
    copy = tmp / log.name
    copy.write_bytes(b"".join(raw))
    return copy, stop


@pytest.mark.parametrize("change", ["delete", "alter", "swap", "truncate"])
def test_a_tampered_log_fails_naming_the_line(
    two_workers_log: Path, tmp_path: Path, change: str
) -> None:
    copy, stop = _tampered(two_workers_log, tmp_path, change)
    done = verify(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{copy}:{stop}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if change != "truncate":
        assert "flux w0" in done.stderr
    # A swap is said as one, not as lines missing (outside check, 2).
    expected = {"delete": "manquante", "alter": "modifiée", "swap": "hors d'ordre"}
    assert expected.get(change, "tronquée") in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"\x00\xff\xfegarbage\n", 1), (b"not json at all\n", 1), (None, 2)],
)
def test_garbage_is_said_in_one_line(tmp_path: Path, content: bytes | None, code: int) -> None:
    path = tmp_path / "log.jsonl"
    if content is not None:
        path.write_bytes(content)
    done = verify(path)
    assert done.returncode == code
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def rotated(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[list[Path]]:
    """Three files of one log: rotated by logrotate's way (rename, SIGUSR1)
    while the relay runs, then again while it is stopped (the restart
    continues from the state's head)."""
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port))
    try:
        relay.start()
        sends(relay, upstream, pki, 2)
        first = relay.log_path.with_name("mss-relay.jsonl-20260101")
        relay.log_path.rename(first)
        relay.process.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        assert relay.wait_event("log_reopened")
        assert relay.wait_event("audit_heads", where=lambda e: e["reason"] == "reopen")
        sends(relay, upstream, pki, 2)
        relay.stop()
        second = relay.log_path.with_name("mss-relay.jsonl-20260102")
        relay.log_path.rename(second)  # rotated while the relay is stopped
        relay.start()
        sends(relay, upstream, pki, 2)
        relay.stop()
        yield [first, second, relay.log_path]
    finally:
        relay.stop()
        upstream.stop()


def test_rotation_and_restarts_keep_one_chain(rotated: list[Path]) -> None:
    first, second, third = rotated
    # Each file anchored: the reopened one, the restarted one (audit/anchors.py).
    assert next(e["reason"] for e in lines(second) if e["event"] == "audit_heads") == "reopen"
    assert next(e["reason"] for e in lines(third) if e["event"] == "audit_heads") == "start"
    assert lines(second)[0]["seq"] == lines(first)[-1]["seq"] + 1
    assert lines(third)[0]["seq"] == lines(second)[-1]["seq"] + 1
    done = verify(*rotated)
    assert done.returncode == 0, done.stderr
    total = sum(len(lines(p)) for p in rotated)
    assert done.stdout.splitlines() == [f"{total} lignes, chaîne intacte"]
    assert "flux : w0" in done.stderr
    # Compressed by logrotate: the same.
    packed = first.with_name(first.name + ".gz")
    packed.write_bytes(gzip.compress(first.read_bytes()))
    assert verify(packed, second, third).returncode == 0


def test_a_missing_middle_file_or_the_wrong_order_fails(rotated: list[Path]) -> None:
    first, second, third = rotated
    missing = verify(first, third)
    assert missing.returncode == 1
    assert f"{third}:1" in missing.stderr and "manquante" in missing.stderr
    disorder = verify(second, first, third)
    assert disorder.returncode == 1
    assert f"{first}:1" in disorder.stderr and "désordre" in disorder.stderr


def test_a_first_file_whose_predecessor_is_gone_passes(rotated: list[Path]) -> None:
    _, second, third = rotated
    done = verify(second, third)
    assert done.returncode == 0, done.stderr
    assert "fichier qui n'est plus présent" in done.stdout
    assert done.stdout.strip().endswith("lignes, chaîne intacte")


# --- the relay's own daily files, under faketime ---------------------------


def _faked(relay: Relay, start: str) -> None:
    """The relay's clock starts at `start` and runs on. libfaketime preloaded
    into the relay's own process, as in test_lifecycle.py (the faketime
    command would stand between SIGTERM and the relay); monotonic time stays
    the real one (asyncio's timers)."""
    if not LIBFAKETIME.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    faked = [f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME=@{start}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
    relay.process.args = ["env", "TZ=UTC", *faked, *relay.process.args]


def _daily(tmp_path: Path, pki: Pki, hashes: dict[str, str], port: int) -> Relay:
    config = base_config(pki, hashes, port)
    # log.rotate unset: daily is the default for a log file.
    config["log"] = {"file": "var/log/mss-relay.jsonl", "retention_days": 183}
    return Relay(tmp_path, config)


def test_retention_deletes_old_files_and_keeps_the_others(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = _daily(tmp_path, pki, password_hashes, upstream.port)
    logs = tmp_path / "var" / "log"
    logs.mkdir(parents=True)
    old = logs / "mss-relay-2025-11-29.jsonl.gz"  # 184 days before 2026-06-01
    kept = logs / "mss-relay-2025-11-30.jsonl.gz"  # 183 days: kept
    for path in (old, kept):
        path.write_bytes(gzip.compress(b""))
    yesterday = logs / "mss-relay-2026-05-31.jsonl"
    yesterday.write_bytes(b"")
    _faked(relay, "2026-06-01 12:00:00")
    try:
        relay.start()
        purged = relay.wait_event("log_purged")
        assert purged and purged[0]["count"] == 1 and purged[0]["retention_days"] == 183
        assert not old.exists() and kept.exists()
        assert wait_for(lambda: (logs / "mss-relay-2026-05-31.jsonl.gz").exists())
        assert not yesterday.exists()
        assert relay.log_path.is_symlink()
        assert relay.log_path.resolve().name == "mss-relay-2026-06-01.jsonl"
    finally:
        relay.stop()
        upstream.stop()


def test_a_day_change_switches_files_and_the_chain_goes_on(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = _daily(tmp_path, pki, password_hashes, upstream.port)
    # Messages until the day changes: as many as the clock takes, unthrottled.
    relay.config.setdefault("throttle", {})["messages_per_minute"] = 0
    relay.config_path.write_text(yaml.safe_dump(relay.config, sort_keys=False))
    logs = tmp_path / "var" / "log"
    # 15 s before midnight: room for a start slowed by a loaded machine (the
    # fake clock runs from the process's start), so the first message is
    # still of June 1st; then messages until the day changes.
    _faked(relay, "2026-06-01 23:59:45")
    before, after = logs / "mss-relay-2026-06-01.jsonl", logs / "mss-relay-2026-06-02.jsonl"
    try:
        relay.start()
        sends(relay, upstream, pki, 1)

        def next_day() -> bool:
            sends(relay, upstream, pki, 1)
            return after.exists()

        assert wait_for(next_day, timeout=60)
        relay.stop()
    finally:
        relay.stop()
        upstream.stop()
    assert before.exists() and lines(before) and lines(after)
    assert relay.log_path.resolve() == after.resolve()
    done = verify(before, after)
    assert done.returncode == 0, done.stderr


def test_a_logrotate_installation_moving_to_daily_keeps_its_log(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """log.file a plain file (log.rotate: external until now), then the
    default: the old log is kept under logrotate's dateext name, never
    replaced by the link, and the chain goes on from it into the daily file."""
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port))
    try:
        relay.start()
        sends(relay, upstream, pki, 1)
        relay.stop()
        old_lines = relay.log_path.read_bytes()
        assert not relay.log_path.is_symlink() and old_lines
        relay.config["log"] = {"file": "var/log/mss-relay.jsonl"}
        relay.config_path.write_text(yaml.safe_dump(relay.config, sort_keys=False))
        relay.start()
        sends(relay, upstream, pki, 1)
        relay.stop()
    finally:
        relay.stop()
        upstream.stop()
    logs = relay.log_path.parent
    kept = [p for p in logs.iterdir() if p.name.startswith("mss-relay.jsonl-")]
    assert len(kept) == 1 and kept[0].read_bytes() == old_lines, sorted(logs.iterdir())
    assert relay.log_path.is_symlink()
    today = relay.log_path.resolve()
    assert today.name.startswith("mss-relay-") and lines(today)
    done = verify(kept[0], today)
    assert done.returncode == 0, done.stderr


def _saved_seq(relay: Relay, stream: str) -> int:
    import sqlite3

    database = relay.workdir / relay.config.get("state", {}).get("database", "var/state.sqlite3")
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT seq FROM log_heads WHERE stream = ?", (stream,)).fetchone()
    return int(row[0]) if row else 0


def test_a_crash_then_a_restart_on_a_later_day_goes_on_with_the_chain(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """kill -9 just after some mail (the state's head, saved every 10 s, is
    behind the file), the restart two days later: today's file does not
    exist yet, the stream's last line is found in the newest file that has
    it (outside check, 3)."""
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = _daily(tmp_path, pki, password_hashes, upstream.port)
    logs = tmp_path / "var" / "log"
    plain = list(relay.process.args)
    crashed, restarted = logs / "mss-relay-2026-06-01.jsonl", logs / "mss-relay-2026-06-03.jsonl"
    _faked(relay, "2026-06-01 12:00:00")
    try:
        relay.start()
        sends(relay, upstream, pki, 3)
        assert relay.wait_event("transaction", count=3)
        relay.stop(signal.SIGKILL)
        last = lines(crashed)[-1]
        # What makes the case: the state does not know the file's last line.
        assert _saved_seq(relay, "w0") < last["seq"], "the head was saved before the kill"
        relay.process.args = plain
        _faked(relay, "2026-06-03 12:00:00")
        relay.start()
        sends(relay, upstream, pki, 1)
        packed = crashed.with_name(crashed.name + ".gz")  # the start's upkeep
        assert wait_for(lambda: packed.exists() and not crashed.exists())
        relay.stop()
    finally:
        relay.stop()
        upstream.stop()
    assert lines(restarted)[0]["seq"] == last["seq"] + 1
    done = verify(packed, restarted)
    assert done.returncode == 0, done.stderr


def test_a_crash_then_the_log_moved_by_logrotate_goes_on_with_the_chain(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """log.rotate: external. kill -9, then logrotate moves log.file aside
    before the restart: the last line is found in the copy."""
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port))
    try:
        relay.start()
        sends(relay, upstream, pki, 2)
        assert relay.wait_event("transaction", count=2)
        relay.stop(signal.SIGKILL)
        last = lines(relay.log_path)[-1]
        assert _saved_seq(relay, "w0") < last["seq"], "the head was saved before the kill"
        moved = relay.log_path.with_name("mss-relay.jsonl-20260101")
        relay.log_path.rename(moved)
        relay.start()
        sends(relay, upstream, pki, 1)
        relay.stop()
    finally:
        relay.stop()
        upstream.stop()
    assert lines(relay.log_path)[0]["seq"] == last["seq"] + 1
    done = verify(moved, relay.log_path)
    assert done.returncode == 0, done.stderr


# --- anchors: a stream idle in the files given (audit/anchors.py) ----------


def _close_on(relay: Relay, upstream: Upstream, pki: Pki, day: str) -> None:
    """An administrative close (the « cli » stream) on that faked day."""
    sends(relay, upstream, pki, 1, to=PATIENT)
    faked = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"@{day} 12:00:30", "TZ": "UTC"}
    command = [sys.executable, "-m", "mss_relay", "conversations", "close", DR, PATIENT]
    closed = subprocess.run(
        [*command, "--config", str(relay.config_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env=os.environ | faked | {"FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )
    assert closed.returncode == 0, closed.stderr


@pytest.fixture(scope="module")
def cli_days(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> list[Path]:
    """Four days of daily files, the relay started each day: the « cli »
    stream writes on day 1 and day 3 only (an administrative close is rare)."""
    tmp = tmp_path_factory.mktemp("anchors")
    upstream = Upstream(tmp)
    upstream.start()
    relay = _daily(tmp, pki, password_hashes, upstream.port)
    logs = tmp / "var" / "log"
    plain = list(relay.process.args)
    days = ["2026-06-01", "2026-06-02", "2026-06-03", "2026-06-04"]
    try:
        for number, day in enumerate(days):
            relay.process.args = list(plain)
            _faked(relay, f"{day} 12:00:00")
            relay.start()
            if number:  # the start's upkeep compresses the day before
                packed = logs / f"mss-relay-{days[number - 1]}.jsonl.gz"
                assert wait_for(packed.exists)
            if day in (days[0], days[2]):
                _close_on(relay, upstream, pki, day)
            else:
                sends(relay, upstream, pki, 1)
            relay.stop()
    finally:
        relay.stop()
        upstream.stop()
    files = [logs / f"mss-relay-{day}.jsonl.gz" for day in days[:3]]
    return [*files, logs / f"mss-relay-{days[3]}.jsonl"]


def _packed_lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return data.splitlines(keepends=True)


def test_a_stream_whose_last_line_retention_deleted_passes_thanks_to_the_anchors(
    cli_days: list[Path],
) -> None:
    # Day 1 deleted (retention): cli's line of day 3 (seq 2) follows a line
    # no longer there, in a file that is not the first given; day 2's start
    # anchor names cli's head (seq 1), so the chain is checked from it.
    third = [json.loads(raw) for raw in _packed_lines(cli_days[2])]
    assert [e["seq"] for e in third if e["stream"] == "cli"] == [2]
    anchors = [json.loads(r) for r in _packed_lines(cli_days[1]) if b'"audit_heads"' in r]
    assert anchors and anchors[0]["reason"] == "start" and anchors[0]["heads"]["cli"]["seq"] == 1
    done = verify(*cli_days[1:])
    assert done.returncode == 0, done.stderr
    total = sum(len(_packed_lines(p)) for p in cli_days[1:])
    assert done.stdout.splitlines()[-1] == f"{total} lignes, chaîne intacte"
    assert "flux : w0, cli" in done.stderr
    assert verify(*cli_days).returncode == 0


def test_a_streams_lines_deleted_from_a_middle_file_fail_at_the_next_anchor(
    cli_days: list[Path], tmp_path: Path
) -> None:
    # cli's line of day 3 deleted: no cli line comes after it, but day 4's
    # start anchor says cli was at seq 2.
    raw = _packed_lines(cli_days[2])
    kept = [line for line in raw if b'"stream": "cli"' not in line]
    assert len(kept) == len(raw) - 1
    tampered = tmp_path / cli_days[2].name
    tampered.write_bytes(gzip.compress(b"".join(kept)))
    last = cli_days[3]
    at = next(n for n, r in enumerate(_packed_lines(last), 1) if b'"audit_heads"' in r)
    for given in ([cli_days[1], tampered, last], [*cli_days[:2], tampered, last]):
        done = verify(*given)
        assert done.returncode == 1, done.stdout
        assert f"{last}:{at} (ancre audit_heads, flux cli au seq 2)" in done.stderr, done.stderr
        assert "1 ligne(s) manquante(s) avant celle-ci (seq 2 à 2" in done.stderr
