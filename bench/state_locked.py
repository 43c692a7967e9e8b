"""Time to the 250 while another process holds the state database locked.

    .venv/bin/python bench/state_locked.py [--messages 3]

The real relay (tests/support's harness: one worker, the recording upstream)
and a sqlite3 connection of this process holding « BEGIN EXCLUSIVE » on its
state file. `--messages` clients, at once, each send one message from a
professional's BAL to a patient (so each one is to be recorded); the figure is
each client's time from the end of DATA to the reply, with the lock held
throughout. Issue 13 (defect 3): the reply must not wait for the database.
Loopback only; prints the figures, writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/state_locked.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import concurrent.futures
import sqlite3
import tempfile
import time
from pathlib import Path

import trustme

from mss_relay.passwords import hash_password

# The tests' own stack and configuration, on purpose: this reproduces the
# end-to-end scenario of issue 13 (defect 3) outside pytest, with a timer.
from tests.conftest import PASSWORDS, Pki, Stack, base_config
from tests.support.mail import connect, make_message, wire_data
from tests.support.processes import Relay, Upstream

DR = "jean.dupont@ch-exemple.mssante.fr"
PATIENTS = (
    "295109912611193@patient.mssante.fr",
    "185057800608491@patient.mssante.fr",
    "253072B07300470@patient.mssante.fr",
    "253072A07300443@patient.mssante.fr",
)


def one(stack: Stack, patient: str) -> tuple[int, float]:
    with connect(stack, "jdupont") as client:
        assert client.sock is not None
        client.sock.settimeout(120)  # longer than any wait to measure
        client.mail(DR)
        client.rcpt(patient)
        client.docmd("DATA")
        start = time.monotonic()
        client.send(wire_data(make_message(sender=DR, to=patient)))
        code, _ = client.getreply()
        return code, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3, choices=range(1, len(PATIENTS) + 1))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = trustme.CA()
        issued = ca.issue_cert("localhost", "127.0.0.1")
        cert, key = work / "relay.pem", work / "relay.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        pki = Pki(ca, cert, key)
        hashes = {name: hash_password(pw) for name, pw in PASSWORDS.items()}
        upstream = Upstream(work)
        upstream.start()
        relay = Relay(work, base_config(pki, hashes, upstream.port))
        relay.start()
        stack = Stack(relay, upstream, pki)
        try:
            lock = sqlite3.connect(work / "var" / "state.sqlite3", isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                with concurrent.futures.ThreadPoolExecutor(args.messages) as pool:
                    results = list(pool.map(lambda p: one(stack, p), PATIENTS[: args.messages]))
            finally:
                lock.rollback()
                lock.close()
        finally:
            relay.stop()
            upstream.stop()
    for code, seconds in sorted(results, key=lambda r: r[1]):
        print(f"{code}  {seconds:6.2f} s")


if __name__ == "__main__":
    main()
