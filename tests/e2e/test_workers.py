"""workers: N — several processes share the listening sockets (SO_REUSEPORT),
the SQLite file and the log; a dead worker is started again; a stop stops all."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import Pki, Stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay, Upstream, wait_for

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def worker_pids(config: Path) -> list[int]:
    """The worker processes started for this configuration (not the first)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in command and b"--worker" in command:
            pids.append(int(entry.name))
    return pids


def test_workers_share_the_port_and_stop_together(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port, workers=3))
    relay.start()
    try:
        assert len(relay.wait_event("started", count=3)) == 3
        assert wait_for(lambda: len(worker_pids(relay.config_path)) == 2)
        stack = Stack(relay, upstream, pki)
        for _ in range(24):  # one connection each: the kernel spreads them
            with connect(stack) as client:
                _, (code, _) = send(client, SENDER, [DEST], make_message())
                assert code == 250
        done = relay.wait_event("transaction", count=24)
        assert {e["outcome"] for e in done} == {"delivered"} and len(done) == 24
        assert len({e["worker"] for e in done}) > 1  # all on one: (1/3)^23, never
        assert len(upstream.messages()) == 24

        # A worker that dies is started again.
        victim = worker_pids(relay.config_path)[0]
        os.kill(victim, signal.SIGKILL)
        exited = relay.wait_event("worker_exited")
        assert exited and exited[0]["pid"] == victim
        assert len(relay.wait_event("started", count=4)) == 4
        assert wait_for(lambda: len(worker_pids(relay.config_path)) == 2)
        assert victim not in worker_pids(relay.config_path)
    finally:
        assert relay.stop() == 0
        upstream.stop()
    assert wait_for(lambda: not worker_pids(relay.config_path), 5)
    assert len(relay.events("stopped")) == 3
