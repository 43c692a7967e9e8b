"""The log writer on a real full (or read-only) file system: it survives, holds
a bounded number of lines, counts what it drops, says so, and resumes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mss_relay.config import ConfigError, parse_config
from mss_relay.log import LineWriter
from tests.support.filesystems import fill, remount, small_tmpfs

# Longer than a memory page: tmpfs has room for a short line in the log
# file's last page even when the file system is full.
DURING = "during " + "x" * 5000


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def lines_of(path: Path) -> list[str]:
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines()


def events(path: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in lines_of(path):
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "fs") as directory:
        yield directory


def test_the_writer_survives_enospc_and_resumes_by_itself(
    disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = disk / "log.jsonl"
    writer = LineWriter(path)
    try:
        writer.write("before")
        wait_for(lambda: lines_of(path) == ["before"])
        filler = fill(disk)
        writer.write(DURING)
        wait_for(lambda: not writer.healthy)
        filler.unlink()
        writer.write("after")
        wait_for(lambda: "after" in lines_of(path))
        wait_for(lambda: writer.healthy)
    finally:
        writer.close()
    lines = lines_of(path)
    # Nothing lost (far below the bound): the line written during the outage
    # was held and written on recovery, before the recovery line.
    assert lines[:2] == ["before", DURING]
    (recovered,) = events(path, "log_recovered")
    assert recovered["level"] == "warning"
    assert recovered["dropped"] == 0
    assert recovered["error"] == "ENOSPC"
    assert isinstance(recovered["outage_s"], float) and recovered["outage_s"] >= 0
    assert lines.index("after") > lines.index(json.dumps(recovered, ensure_ascii=False))
    err = capsys.readouterr().err
    assert err.count("cannot write the log") == 1, err  # once per outage, not per retry
    assert "No space left on device" in err and "Traceback" not in err
    assert "log written again" in err and "0 lines dropped" in err


def test_a_line_cut_by_enospc_is_completed_on_recovery(disk: Path) -> None:
    path = disk / "log.jsonl"
    writer = LineWriter(path)
    try:
        filler = fill(disk)
        os.truncate(filler, filler.stat().st_size - 8192)  # two pages free
        big = "x" * 20_000  # more than the room left: a short write(2), then ENOSPC
        writer.write(big)
        wait_for(lambda: not writer.healthy)
        filler.unlink()
        writer.write("next")
        wait_for(lambda: "next" in lines_of(path))
    finally:
        writer.close()
    lines = lines_of(path)
    assert lines[0] == big
    assert events(path, "log_recovered")[0]["dropped"] == 0


def test_memory_stays_bounded_and_drops_are_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # /dev/full: every write(2) fails with ENOSPC, for real.
    writer = LineWriter(Path("/dev/full"), limit=50)
    try:
        writer.write("first")
        wait_for(lambda: not writer.healthy)
        for i in range(10_000):
            writer.write(f"line {i}")
        # The newest lines are dropped once `limit` wait: the older ones (the
        # transactions accepted before the failure) are the ones kept.
        assert writer.queued <= 50
        assert writer.dropped >= 10_000 - 50
        assert not writer.healthy
    finally:
        writer.close()
    err = capsys.readouterr().err
    assert err.count("cannot write the log") == 1, err
    assert "log still not writable at exit" in err
    assert "Traceback" not in err


def test_read_only_then_writable_again(disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = disk / "log.jsonl"
    writer = LineWriter(path)
    try:
        writer.write("before")
        wait_for(lambda: lines_of(path) == ["before"])
        filler = fill(disk)
        writer.write(DURING)
        wait_for(lambda: not writer.healthy)
        # Between two retries the writer holds no file open: the kernel lets the
        # file system go read-only (as ext4 does by itself on errors=remount-ro).
        wait_for(lambda: remount(disk, "ro"))
        wait_for(lambda: "Read-only file system" in capsys.readouterr().err)
        assert remount(disk, "rw")
        filler.unlink()
        wait_for(lambda: writer.healthy)
        writer.write("after")
        wait_for(lambda: "after" in lines_of(path))
    finally:
        remount(disk, "rw")
        writer.close()
    assert lines_of(path)[:2] == ["before", DURING]
    (recovered,) = events(path, "log_recovered")
    assert recovered["error"] == "ENOSPC, EROFS"


def test_a_log_file_removed_is_made_again(disk: Path) -> None:
    path = disk / "log.jsonl"
    writer = LineWriter(path)
    try:
        writer.write("one")
        wait_for(lambda: lines_of(path) == ["one"])
        path.rename(disk / "log.jsonl.1")  # rotated away (logrotate without copytruncate)

        def rewritten() -> bool:
            writer.write("two")
            return path.exists() and "two" in lines_of(path)

        wait_for(rewritten)
    finally:
        writer.close()
    assert lines_of(disk / "log.jsonl.1")[0] == "one"


def test_standard_output_still_works(capfd: pytest.CaptureFixture[str]) -> None:
    writer = LineWriter(None)
    writer.write("to stdout")
    writer.close()
    assert capfd.readouterr().out == "to stdout\n"
    assert writer.healthy


@pytest.mark.parametrize(
    ("log", "required"),
    [(None, True), ({"file": "-"}, True), ({"required": False}, False), ({"required": True}, True)],
)
def test_log_required_defaults_to_true(log: dict[str, object] | None, required: bool) -> None:
    data: dict[str, object] = {"listeners": [{"name": "m", "role": "milter", "port": 10025}]}
    if log is not None:
        data["log"] = log
    assert parse_config(data, Path("/etc/mss-relay/relay.yaml")).log.required is required


def test_log_required_must_be_a_flag() -> None:
    data = {
        "listeners": [{"name": "m", "role": "milter", "port": 10025}],
        "log": {"required": "yes"},
    }
    with pytest.raises(ConfigError, match=r"^log\.required: must be true or false$"):
        parse_config(data, Path("/etc/mss-relay/relay.yaml"))
