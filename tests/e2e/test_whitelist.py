"""The ANS liste blanche (issue 16, part 1), with the real relay process:
with trust_space.whitelist, an outgoing recipient's domain must be listed;
« mss-relay whitelist update » refuses a cut file and a shrink; a new list is
in force in a running relay within seconds, connections kept; the download
trusts only trust_space.whitelist_ca."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trustme

from tests.conftest import Pki, Stack, _stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay
from tests.support.whitelist import entries, whitelist_xml, with_domains

SENDER = "jean.dupont@ch-exemple.mssante.fr"
NOT_LISTED = b"domaine absent de la liste blanche MSSante"


def update(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mss_relay", "whitelist", "update", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def whitelisted(
    tmp: Path, pki: Pki, hashes: dict[str, str], data: bytes, workers: int = 1, **trust: Any
) -> Iterator[Stack]:
    listed = tmp / "listeblanchemssante.xml"
    listed.write_bytes(data)
    trust_space = {"whitelist": str(listed), **trust}
    yield from _stack(tmp, pki, hashes, trust_space=trust_space, workers=workers)


def rcpt(stack: Stack, *recipients: str) -> list[tuple[int, bytes]]:
    with connect(stack) as client:
        assert client.mail(SENDER)[0] == 250
        return [client.rcpt(r) for r in recipients]


def test_listed_unlisted_other_case_and_apicrypt(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with whitelisted(tmp_path, pki, password_hashes, whitelist_xml()) as stack:
        replies = rcpt(
            stack,
            "dr.martin@chu-b.mssante.fr",  # listed
            "x@nobody-registered.mssante.fr",  # ends in mssante.fr, not listed
            "y@uc-cmp.MSSANTE.FR.",  # listed as UC-CMP.mssante.fr; trailing dot
            "z@mssante.apicrypt.org",  # listed, outside mssante.fr
            "w@sub.chu-b.mssante.fr",  # a sub-domain of a listed one: not listed
        )
        codes = [code for code, _ in replies]
        assert codes == [250, 550, 250, 250, 550], replies
        assert replies[1][1].startswith(
            b"5.7.1 <x@nobody-registered.mssante.fr> : domaine absent de la liste blanche MSSante"
        )
        with connect(stack) as client:
            _, (code, _) = send(client, SENDER, ["z@mssante.apicrypt.org"], make_message())
            assert code == 250
        assert len(stack.upstream.messages()) == 1
        refused = stack.relay.wait_event(
            "decision", where=lambda e: e["stage"] == "rcpt" and e["rule"] == "trust_space"
        )
        assert refused[0]["reason"] == "recipient domain not in the liste blanche"


def test_update_refuses_a_cut_file_and_a_shrink_unless_forced(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    full = whitelist_xml()
    with whitelisted(tmp_path, pki, password_hashes, full) as stack:
        config, listed = stack.relay.config_path, tmp_path / "listeblanchemssante.xml"
        cut = tmp_path / "cut.xml"
        cut.write_bytes(full[: full.index(b"<Nom>", len(full) // 2) + 8])
        done = update(config, "--from", str(cut))
        assert done.returncode != 0
        assert len(done.stderr.splitlines()) == 1 and "not well-formed" in done.stderr
        # 90 % of the domains gone (the first 500 kept: chu-b among them,
        # the apicrypt-style domains too; ets-4000 gone).
        small = tmp_path / "small.xml"
        small.write_bytes(whitelist_xml(entries(650, 500, 40)))
        done = update(config, "--from", str(small))
        assert done.returncode != 0 and len(done.stderr.splitlines()) == 1
        assert "would remove 90% of the listed domains" in done.stderr, done.stderr
        assert listed.read_bytes() == full
        assert [c for c, _ in rcpt(stack, "a@ets-4000.mssante.fr")] == [250]

        done = update(config, "--from", str(small), "--force")
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            "650 entrées, 500 domaines, 40 certificats d'opérateur,"
            " générée le 2024-05-02T03:15:00+02:00\n"
        )
        assert stack.relay.wait_event("whitelist_reloaded", where=lambda e: e["entries"] == 650)
        assert [c for c, _ in rcpt(stack, "a@ets-4000.mssante.fr", "b@chu-b.mssante.fr")] == [
            550,
            250,
        ]


def test_update_accepts_missing_end_tags_and_says_so(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    listed = tmp_path / "l.xml"
    config = tmp_path / "relay.yaml"
    Relay(tmp_path, base_config(pki, password_hashes, 25, trust_space={"whitelist": str(listed)}))
    source = tmp_path / "published.xml"
    source.write_bytes(whitelist_xml(close=False))
    done = update(config, "--from", str(source))
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("6500 entrées, 5000 domaines, 400 certificats d'opérateur")
    assert "</ListeBlancheMSSante> absente" in second
    assert listed.read_bytes() == source.read_bytes()
    command = [sys.executable, "-m", "mss_relay", "whitelist", "check", "--config", str(config)]
    check = subprocess.run(
        [*command, "MSSANTE.apicrypt.org"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and "listed, 2 operator certificate(s)" in check.stdout


def test_a_new_list_is_in_force_in_every_worker_with_a_session_open(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with whitelisted(tmp_path, pki, password_hashes, whitelist_xml(), workers=2) as stack:
        relay = stack.relay
        assert len(relay.wait_event("started", count=2)) == 2
        with connect(stack) as client:
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt("dr@new-ets.mssante.fr")[0] == 550
            newer = tmp_path / "newer.xml"
            newer.write_bytes(with_domains(["new-ets.mssante.fr"]))
            done = update(relay.config_path, "--from", str(newer))
            assert done.returncode == 0, done.stderr
            reloaded = relay.wait_event("whitelist_reloaded", count=2, timeout=10)
            assert {e["worker"] for e in reloaded} == {0, 1}
            # The same connection, the same transaction: the new list.
            assert client.rcpt("dr@new-ets.mssante.fr")[0] == 250
            assert client.docmd("DATA")[0] == 354
            client.send(b"Subject: x\r\nFrom: " + SENDER.encode() + b"\r\n\r\nx\r\n.\r\n")
            assert client.getreply()[0] == 250


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(pki: Pki, body: bytes) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/listeblanchemssante.xml"
    finally:
        server.shutdown()
        server.server_close()


def test_download_trusts_only_whitelist_ca(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    ours, other = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    pki.ca.cert_pem.write_to_path(str(ours))
    trustme.CA().cert_pem.write_to_path(str(other))
    listed = tmp_path / "l.xml"
    with https_server(pki, whitelist_xml()) as url:
        for ca, code in ((other, 1), (ours, 0)):
            trust = {"whitelist": str(listed), "whitelist_url": url, "whitelist_ca": str(ca)}
            relay = Relay(tmp_path, base_config(pki, password_hashes, 25, trust_space=trust))
            done = update(relay.config_path)
            assert done.returncode == code, (ca, done.stdout, done.stderr)
            if code:
                assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
                assert not listed.exists()
        assert done.stdout.startswith("6500 entrées, 5000 domaines")


def test_the_relay_refreshes_from_the_url_and_warns_of_a_stale_list(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    ca = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca))
    old = whitelist_xml(generated="2020-01-01T00:00:00Z")
    with (
        https_server(pki, with_domains(["fresh.mssante.fr"])) as url,
        whitelisted(
            tmp_path,
            pki,
            password_hashes,
            old,
            whitelist_url=url,
            whitelist_ca=str(ca),
            refresh="1s",
        ) as stack,
    ):
        relay = stack.relay
        stale = relay.wait_event("whitelist_stale")
        assert stale and stale[0]["generated"] == "2020-01-01T00:00:00Z"
        assert relay.wait_event("whitelist_refreshed", where=lambda e: e["replaced"])
        assert relay.wait_event("whitelist_reloaded")
        assert [c for c, _ in rcpt(stack, "a@fresh.mssante.fr")] == [250]
