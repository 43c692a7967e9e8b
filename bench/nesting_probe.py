"""A probe session's latency while another client sends messages nested 1,000 deep.

    .venv/bin/python bench/nesting_probe.py [--probes 100] [--levels 1000]

Issue 13, defect 1: one client's hostile messages must not freeze every other
session. The real relay (1 worker, bench/compare.py's configuration, DKIM
signing, smtp-sink upstream) with a milter listener too. A probe sends 2 KB
messages (bench/load.py's) one after the other, on the SMTP listener
over one session, and on the milter one transaction per connection (as
tests/support/milter_client.py drives it); its latency per message is taken
from MAIL to the final reply. First quiet, then while an attacker process
sends, without pause, messages of `--levels` nested multipart/mixed levels
(about 118 KiB at 1,000) on the same listener: "deep", whose boundaries core.mime's
scan reads, and "deep-odd", the same behind a message/rfc822 part that sends
it to the standard library's parser. Figures: median and p95 of the probe's
latency quiet and under each attack, and their factor; the attacker's replies
(all should be 550 5.6.0). Writes bench/results/nesting_probe.json.
Loopback only; a machine shared with other work gives noisy figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/nesting_probe.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import json
import multiprocessing
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.support.milter_client import MilterClient

from .harness import (
    DPI_USER,
    RESULTS,
    RelayProcess,
    Sink,
    free_port,
    make_dkim_key,
    relay_config,
)
from .harness import (
    listener as smtp_listener,
)
from .load import RECIPIENT, SENDER, build_message, parse_size, wire_bytes
from .report import percentile
from .targets import RELAY_SECTIONS

PROBE_SIZE = parse_size("2KB")
ATTACKS = ("deep", "deep-odd")


def deep_message(levels: int, odd: bool) -> str:
    """Multiparts nested `levels` deep around one text leaf, LF line ends
    (wire_bytes() makes them CRLF). Boundaries of 24 characters, none a
    prefix of another: about 118 KiB at 1,000 levels."""
    body = "Content-Type: text/plain\n\nfeuille\n"
    for i in range(levels):
        b = f"nest-{i:04d}-" + "q" * 14
        body = f"Content-Type: multipart/mixed; boundary={b}\n\n--{b}\n{body}\n--{b}--\n"
    if odd:  # a message/rfc822 part first: core.mime's scan leaves it to the stdlib
        top = "odd-top"
        body = (
            f"Content-Type: multipart/mixed; boundary={top}\n\n--{top}\n"
            "Content-Type: message/rfc822\n\nFrom: a@b.mssante.fr\n\nx\n"
            f"--{top}\n{body}\n--{top}--\n"
        )
    return (
        f"From: <{SENDER}>\nTo: <{RECIPIENT}>\nSubject: imbrication\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\nMessage-ID: <deep@ch-bench.mssante.fr>\n"
        "MIME-Version: 1.0\n" + body
    )


class SmtpClient:
    """One SMTP session, the DPI's (a trusted client: no AUTH), commands pipelined."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.expect(b"220")
        self.sock.sendall(b"EHLO dpi.ch-bench.mssante.fr\r\n")
        self.expect(b"250")

    def expect(self, code: bytes | None = None) -> str:
        while True:
            line = self.file.readline()
            if code is not None and not line.startswith(code):
                raise RuntimeError(f"expected {code!r}, got {line!r}")
            if line[3:4] != b"-":
                return line.decode(errors="replace").strip()

    def send(self, wire: bytes) -> str:
        self.sock.sendall(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
        self.expect(b"250")
        self.expect(b"250")
        self.expect(b"354")
        self.sock.sendall(wire)
        return self.expect()

    def close(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


def milter_send(port: int, content: bytes) -> str:
    """One transaction through the milter, as Postfix would pass it."""
    with MilterClient(port, timeout=600) as client:
        # Macros go without a reply, the next command right behind them: with
        # Nagle's algorithm that second write waits for a delayed ACK (40 ms).
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.negotiate()
        client.macros("C", {"j": "mx.ch-bench.mssante.fr", "{daemon_name}": "smtpd"})
        client.connect("127.0.0.1")
        client.helo("dpi.ch-bench.mssante.fr")
        client.mail(SENDER, **{"{auth_authen}": DPI_USER})
        client.rcpt(RECIPIENT)
        last = client.message(content)[-1]
    # y: a reply with its text (refused); r, t: refused, tempfail without one.
    return last.text if last.code == "y" else {"r": "5xx", "t": "4xx"}.get(last.code, "accept")


def sender(listener: str, port: int) -> tuple[Callable[[bytes], str], Callable[[], None]]:
    """send(content as on the wire) -> final reply, and close()."""
    if listener == "smtp":
        client = SmtpClient(port)
        return client.send, client.close

    def via_milter(wire: bytes) -> str:
        # The milter gets the message itself, not its SMTP transparency.
        content = wire[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
        return milter_send(port, content)

    return via_milter, lambda: None


def attacker(listener: str, port: int, wire: bytes, stop: Event, replies: Any) -> None:
    """Sends the deep message without pause until told to stop; counts replies."""
    send, close = sender(listener, port)
    while not stop.is_set():
        reply = send(wire)
        with replies.get_lock():
            replies[0] += 1
            replies[1] += reply.startswith("550 5.6.0")
    close()


def probe(listener: str, port: int, count: int) -> list[float]:
    send, close = sender(listener, port)
    latencies = []
    for number in range(count):
        wire = wire_bytes(build_message(PROBE_SIZE, f"probe{time.monotonic_ns()}.{number}"))
        started = time.perf_counter()
        reply = send(wire)
        latencies.append((time.perf_counter() - started) * 1000)
        if not reply.startswith(("250", "accept")):
            raise RuntimeError(f"probe refused: {reply}")
    close()
    return latencies


def figures(latencies: list[float]) -> dict[str, float]:
    p95 = percentile(latencies, 0.95)
    assert p95 is not None
    return {"median_ms": round(statistics.median(latencies), 2), "p95_ms": round(p95, 2)}


def measure(listener: str, port: int, probes: int, levels: int) -> dict[str, Any]:
    probe(listener, port, 10)  # warm-up, not recorded
    result: dict[str, Any] = {"quiet": figures(probe(listener, port, probes))}
    for attack in ATTACKS:
        wire = wire_bytes(deep_message(levels, odd=attack == "deep-odd"))
        stop = multiprocessing.Event()
        replies = multiprocessing.Array("l", 2)
        process = multiprocessing.Process(
            target=attacker, args=(listener, port, wire, stop, replies)
        )
        process.start()
        while replies[0] < 1:  # the attack is under way
            time.sleep(0.05)
        try:
            cell = figures(probe(listener, port, probes))
        finally:
            stop.set()
            process.join(timeout=600)
        cell["attack_messages"], cell["attack_550_5_6_0"] = replies[0], replies[1]
        cell["attack_kib"] = round(len(wire) / 1024, 1)
        for key in ("median", "p95"):
            cell[f"{key}_factor"] = round(cell[f"{key}_ms"] / result["quiet"][f"{key}_ms"], 2)
        result[attack] = cell
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--probes", type=int, default=100, help="probe messages per figure")
    parser.add_argument("--levels", type=int, default=1000, help="nesting of the attack")
    args = parser.parse_args()
    multiprocessing.set_start_method("fork")
    results: dict[str, Any] = {"probes": args.probes, "levels": args.levels}
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        work = Path(name)
        key = make_dkim_key(work / "dkim")
        port, milter_port = free_port(), free_port()
        milter = {"name": "milter", "role": "milter", "host": "127.0.0.1", "port": milter_port}
        with Sink(free_port(), work) as sink:
            config = relay_config(
                work / "relay",
                [smtp_listener("dpi", port), milter],
                sink.port,
                dkim_key=key,
                **RELAY_SECTIONS,
            )
            with RelayProcess(work / "relay", config):
                for name, listener_port in (("smtp", port), ("milter", milter_port)):
                    results[name] = measure(name, listener_port, args.probes, args.levels)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "nesting_probe.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in ("smtp", "milter"):
        quiet = results[name]["quiet"]
        print(f"{name}: quiet median {quiet['median_ms']} ms, p95 {quiet['p95_ms']} ms")
        for attack in ATTACKS:
            c = results[name][attack]
            print(
                f"  under {attack} ({c['attack_kib']} KiB, {c['attack_messages']} sent,"
                f" {c['attack_550_5_6_0']} x 550 5.6.0): median {c['median_ms']} ms"
                f" (x{c['median_factor']}), p95 {c['p95_ms']} ms (x{c['p95_factor']})"
            )


if __name__ == "__main__":
    main()
