"""The ANS liste blanche (issue 16, part 1), with the real relay process:
with trust_space.whitelist, an outgoing recipient's domain must be listed;
« mss-relay whitelist update » refuses a cut file and a shrink; a new list is
in force in a running relay within seconds, connections kept; the download
trusts only trust_space.whitelist_ca."""

from __future__ import annotations

import contextlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
    tmp: Path,
    pki: Pki,
    hashes: dict[str, str],
    data: bytes,
    workers: int = 1,
    age: float = 0.0,
    **trust: Any,
) -> Iterator[Stack]:
    """age: the file's modification time that many seconds ago."""
    listed = tmp / "listeblanchemssante.xml"
    listed.write_bytes(data)
    if age:
        os.utime(listed, (time.time() - age, time.time() - age))
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
    location = ""  # a redirect there instead of the body
    # "": the body whole; "length": a Content-Length above the bytes sent;
    # "chunked": one chunk, then the connection closed without the last one.
    cut = ""

    def do_GET(self) -> None:
        if self.location:
            self.send_response(302)
            self.send_header("Location", self.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if self.cut == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(self.body), self.body))
            self.close_connection = True
            return
        extra = 1000 if self.cut == "length" else 0
        self.send_header("Content-Length", str(len(self.body) + extra))
        self.end_headers()
        self.wfile.write(self.body)
        self.close_connection = True

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(pki: Pki | None, body: bytes, **behaviour: str) -> Iterator[str]:
    """An HTTPS server with the test PKI's certificate (pki None: plain HTTP)
    serving body at any path; behaviour: _Handler's location or cut."""
    handler = type("Handler", (_Handler,), {"body": body, **behaviour})
    if behaviour.get("cut") == "chunked":
        handler.protocol_version = "HTTP/1.1"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.cert, pki.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if pki is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/listeblanchemssante.xml"
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


def _configured(tmp: Path, pki: Pki, hashes: dict[str, str], **trust: Any) -> Relay:
    """A configuration written (the relay not started)."""
    trust.setdefault("whitelist", str(tmp / "l.xml"))
    return Relay(tmp, base_config(pki, hashes, 25, trust_space=trust))


def test_update_refuses_a_redirect_to_plain_http(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    ca = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca))
    listed = tmp_path / "l.xml"
    old = whitelist_xml()
    listed.write_bytes(old)
    newer = with_domains(["fresh.mssante.fr"])
    with (
        https_server(None, newer) as plain,
        https_server(pki, b"", location=plain) as to_plain,
        https_server(pki, newer) as good,
        https_server(pki, b"", location=good) as to_https,
    ):
        trust = {"whitelist_url": to_plain, "whitelist_ca": str(ca)}
        done = update(_configured(tmp_path, pki, password_hashes, **trust).config_path)
        assert done.returncode == 1, done.stdout
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert f"redirected to '{plain}', which must be an https:// URL" in done.stderr
        assert listed.read_bytes() == old
        # https to https is still followed, with the same CA.
        trust = {"whitelist_url": to_https, "whitelist_ca": str(ca)}
        done = update(_configured(tmp_path, pki, password_hashes, **trust).config_path)
        assert done.returncode == 0, done.stderr
        assert listed.read_bytes() == newer


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://exa mple/lb.xml", "must not contain spaces or control characters"),
        ("https://[::1/x", "is not a valid URL: Invalid IPv6 URL"),
    ],
)
def test_update_from_a_bad_url_is_one_line(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], url: str, why: str
) -> None:
    done = update(_configured(tmp_path, pki, password_hashes).config_path, "--from", url)
    assert done.returncode == 1
    assert done.stderr == f"mss-relay: whitelist update refused: {url}: {why}\n"


@pytest.mark.parametrize(
    ("cut", "why"), [("length", "download cut short"), ("chunked", "IncompleteRead")]
)
def test_update_refuses_a_download_cut_short(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], cut: str, why: str
) -> None:
    ca = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca))
    full = whitelist_xml()
    # Cut between two entries: alone, it would pass for a file lacking its end tags.
    half = full[: full.index(b"    <Domaine>", len(full) // 2)]
    listed = tmp_path / "l.xml"
    listed.write_bytes(full)
    with https_server(pki, half, cut=cut) as url:
        trust = {"whitelist_url": url, "whitelist_ca": str(ca)}
        done = update(_configured(tmp_path, pki, password_hashes, **trust).config_path)
    assert done.returncode == 1, done.stdout
    assert len(done.stderr.splitlines()) == 1 and why in done.stderr, done.stderr
    assert listed.read_bytes() == full


def test_the_relay_refreshes_at_start_a_list_older_than_refresh(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    ca = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca))
    with (
        https_server(pki, with_domains(["fresh.mssante.fr"])) as url,
        whitelisted(
            tmp_path,
            pki,
            password_hashes,
            whitelist_xml(),
            age=2 * 3600,  # written two hours ago, refresh: 1h: due now
            whitelist_url=url,
            whitelist_ca=str(ca),
            refresh="1h",
        ) as stack,
    ):
        relay = stack.relay
        assert relay.wait_event("whitelist_refreshed", where=lambda e: e["replaced"], timeout=20)
        assert relay.wait_event("whitelist_reloaded")
        assert [c for c, _ in rcpt(stack, "a@fresh.mssante.fr")] == [250]


def test_a_deleted_list_is_said_once_and_again_when_back(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with whitelisted(tmp_path, pki, password_hashes, whitelist_xml()) as stack:
        relay = stack.relay
        listed, away = tmp_path / "listeblanchemssante.xml", tmp_path / "away.xml"
        listed.rename(away)
        assert relay.wait_event("whitelist_invalid")
        away.rename(listed)  # back as it was
        assert relay.wait_event("whitelist_reloaded")
        assert len(relay.events("whitelist_invalid")) == 1
        assert [c for c, _ in rcpt(stack, "a@chu-b.mssante.fr")] == [250]


def test_update_leaves_out_an_entry_whose_nom_is_not_a_domain(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    source = tmp_path / "published.xml"
    source.write_bytes(whitelist_xml([*entries(), ("bad domain!", "CN=x,C=FR")]))
    done = update(_configured(tmp_path, pki, password_hashes).config_path, "--from", str(source))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "6500 entrées, 5000 domaines, 400 certificats d'opérateur,"
        " générée le 2024-05-02T03:15:00+02:00",
        "attention : 1 entrée(s) dont le Nom n'est pas un nom de domaine, laissée(s) de côté",
    ]


def test_check_config_opens_the_list_as_serve_does(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    relay = _configured(tmp_path, pki, password_hashes)
    listed = tmp_path / "l.xml"
    full = whitelist_xml()
    for what, why in (
        (None, "no such file"),
        ("folder", "Is a directory"),
        (b"not xml", "not well-formed XML"),
        (full[: full.index(b"<Nom>", len(full) // 2) + 8], "not well-formed XML"),
    ):
        if what == "folder":
            listed.mkdir()
        elif isinstance(what, bytes):
            if listed.is_dir():
                listed.rmdir()
            listed.write_bytes(what)
        done = relay.cli("check-config")
        assert done.returncode == 78, (what, done.stdout)
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"mss-relay: configuration error: trust_space.whitelist: {listed}")
        assert why in line, line
        served = relay.cli("serve", timeout=30)
        assert served.returncode == 78 and served.stderr == done.stderr
    # A list without the BAL's domain nor the patients': the start warnings.
    gone = ("ch-exemple.mssante.fr", "patient.mssante.fr")
    rows = [(n, dn) for n, dn in entries() if n not in gone]
    listed.write_bytes(whitelist_xml(rows))
    done = relay.cli("check-config")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "liste blanche" in line]
    assert len(warnings) == 2, done.stderr
    assert all(line.startswith("mss-relay: warning: trust_space.whitelist: ") for line in warnings)
    assert "patient.mssante.fr is not in the liste blanche" in warnings[0]
    assert "ch-exemple.mssante.fr are not in the liste blanche" in warnings[1]
