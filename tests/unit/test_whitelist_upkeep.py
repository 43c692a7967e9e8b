"""How a running relay keeps its liste blanche: a missing file said once per
outage, the refresh loop that never dies, the refresh due by the file's age
(at start too), the settings read again while waiting, the age said without
a URL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mss_relay.config import TrustSpaceConfig
from mss_relay.trust import source
from mss_relay.trust.watcher import WhitelistView, refresh
from mss_relay.trust.whitelist import parse_whitelist
from tests.support.whitelist import entries, whitelist_xml

SMALL = whitelist_xml(entries(12, 8, 5))
URL = "https://lists.example/listeblanchemssante.xml"


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def _add(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    info = warning = error = _add

    def events(self, name: str) -> list[dict[str, object]]:
        return [fields for event, fields in self.lines if event == name]


def test_a_missing_file_fails_once_and_is_read_again_when_back(tmp_path: Path) -> None:
    path = tmp_path / "l.xml"
    path.write_bytes(SMALL)
    view = WhitelistView.open(path)
    away = tmp_path / "away.xml"
    path.rename(away)
    with pytest.raises(FileNotFoundError):
        view.changed()
    assert view.changed() is None  # the same outage: not said again
    away.rename(path)  # back as it was (same inode, size, time)
    found = view.changed()
    assert found is not None and found[0].entries == 12


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _run(
    settings: Callable[[], TrustSpaceConfig], view: WhitelistView, log: _Log
) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(
        refresh(settings, lambda: view, log, step=0.05)  # type: ignore[arg-type]
    )


def test_the_refresh_loop_survives_any_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.xml"
    path.write_bytes(SMALL)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    calls: list[str] = []

    def broken(*args: object, **kwargs: object) -> source.Updated:
        calls.append("update")
        raise RuntimeError("not foreseen")

    monkeypatch.setattr(source, "update", broken)
    config = TrustSpaceConfig(whitelist=path, whitelist_url=URL, refresh=1.0)
    log = _Log()

    async def scenario() -> None:
        task = _run(lambda: config, WhitelistView.open(path), log)
        await _until(lambda: len(calls) >= 2 or task.done())
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    failed = log.events("whitelist_refresh_failed")
    assert failed and "not foreseen" in str(failed[0]["error"])


def test_refresh_is_due_by_the_file_age_and_follows_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.xml"
    path.write_bytes(SMALL)
    calls: list[float] = []

    def update(*args: object, **kwargs: object) -> source.Updated:
        calls.append(time.time())
        return source.Updated(parse_whitelist(SMALL), 0.0, replaced=False)

    monkeypatch.setattr(source, "update", update)
    current = [TrustSpaceConfig(whitelist=path, whitelist_url=URL, refresh=3600.0)]
    log = _Log()

    async def scenario() -> None:
        # A file two hours old with refresh: 1h is fetched at once.
        os.utime(path, (time.time() - 7200, time.time() - 7200))
        task = _run(lambda: current[0], WhitelistView.open(path), log)
        await _until(lambda: len(calls) == 1)
        # Just refreshed: nothing due for an hour, until a reload says 1s.
        current[0] = TrustSpaceConfig(whitelist=path, whitelist_url=URL, refresh=1.0)
        await _until(lambda: len(calls) == 2)
        task.cancel()

    asyncio.run(scenario())
    assert len(log.events("whitelist_refreshed")) == 2


def test_a_stale_list_is_said_every_refresh_without_a_url(tmp_path: Path) -> None:
    path = tmp_path / "l.xml"
    path.write_bytes(whitelist_xml(entries(12, 8, 5), generated="2020-01-01T00:00:00Z"))
    config = TrustSpaceConfig(whitelist=path, refresh=1.0)
    log = _Log()

    async def scenario() -> None:
        task = _run(lambda: config, WhitelistView.open(path), log)
        await _until(lambda: len(log.events("whitelist_stale")) >= 2)
        task.cancel()

    asyncio.run(scenario())
    assert log.events("whitelist_stale")[0]["generated"] == "2020-01-01T00:00:00Z"
