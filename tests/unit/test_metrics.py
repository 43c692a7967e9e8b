"""The metrics' tap on the log (mss_relay/metrics.py): what each event counts,
and that no label value ever holds an address, a subject or an INS."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mss_relay.config import ListenerConfig, ListenerTls, MetricsConfig, Role
from mss_relay.health import Endpoint, problems
from mss_relay.log import LineWriter, make_logger
from mss_relay.metrics import EventTap, Instruments, Slots, label
from mss_relay.state.conversations import ConversationStore
from tests.support.keys import TEST_PSEUDONYMS

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# What a log event may carry that must never become a label value.
HOSTILE = [
    "jean.dupont@ch-exemple.mssante.fr",
    "<patient.1840175108123@patient.mssante.fr>",
    "192.168.10.20",
    "::1",
    "2001:db8::7",
    "1 84 01 75 108 123 45",  # an INS
    "184017510812345",
    "Compte rendu de M. Martin",
    "Résultats",
    "x" * 200,
    "",
]
LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def tap(*, counts_reloads: bool = True) -> tuple[EventTap, CollectorRegistry]:
    registry = CollectorRegistry()
    return EventTap(Instruments(registry), counts_reloads=counts_reloads), registry


def values(registry: CollectorRegistry) -> Values:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def feed(counter: EventTap, event: str, **fields: Any) -> None:
    line = {"event": event, **fields}
    assert counter(None, "info", line) is line  # the line goes on unchanged


@pytest.mark.parametrize("hostile", HOSTILE)
def test_no_label_ever_holds_an_address(hostile: str) -> None:
    counter, registry = tap()
    every = {
        "listener": hostile,
        "client": hostile,
        "sender": hostile,
        "recipient": hostile,
        "user": hostile,
        "subject": hostile,
        "patient": hostile,
    }
    feed(counter, "transaction", **every, outcome=hostile, upstream=hostile, size=10)
    feed(counter, "transaction", **every, outcome="tempfailed", upstream=hostile)
    feed(counter, "decision", **every, stage=hostile, verdict="reject", rule=hostile)
    feed(counter, "connection_refused", **every, rule=hostile)
    feed(counter, "auth", **every, result=hostile)
    feed(counter, "upstream", **every, stage=hostile, outcome=hostile)
    seen = values(registry)
    labels = {text for _, pairs in seen for key, text in pairs if key != "le"}
    assert labels, seen
    for text in labels:
        assert LABEL.fullmatch(text) and "@" not in text, text
    if hostile:
        assert hostile not in labels


def test_what_each_event_counts() -> None:
    counter, registry = tap()
    sub = {"listener": "submission", "client": "10.0.0.1", "sender": "a@b.mssante.fr"}
    feed(counter, "transaction", **sub, outcome="delivered", size=2048, duration_ms=12.5)
    feed(counter, "transaction", **sub, outcome="delivered", size=4096, duration_ms=40.0)
    feed(counter, "transaction", **sub, outcome="tempfailed", upstream="451 busy", size=9)
    feed(counter, "transaction", **sub, outcome="tempfailed", reply="internal error")
    feed(counter, "decision", **sub, stage="rcpt", verdict="accept", rule="policy")
    feed(counter, "decision", **sub, stage="mail", verdict="reject", rule="sender_owner")
    feed(counter, "decision", **sub, stage="data", verdict="tempfail", rule="state_unavailable")
    feed(counter, "connection_refused", **sub, rule="max_connections")
    feed(counter, "auth", client="10.0.0.1", user="x", result="failure")
    # smtplib's AUTH LOGIN after a refused PLAIN, same password: counted once.
    feed(counter, "auth", client="10.0.0.1", user="x", result="failure", repeated=True)
    feed(counter, "auth", client="10.0.0.1", user="x", result="failure")
    feed(counter, "upstream", stage="rcpt", outcome="permfailed", txid="A")
    feed(counter, "disconnect", client="10.0.0.1")
    seen = values(registry)

    def at(name: str, **labels: str) -> float:
        return seen.get((name, tuple(sorted(labels.items()))), 0.0)

    messages = "mss_relay_messages_total"
    assert at(messages, listener="submission", outcome="delivered") == 2
    assert at(messages, listener="submission", outcome="tempfailed") == 2
    refusals = "mss_relay_refusals_total"
    assert at(refusals, listener="submission", stage="mail", rule="sender_owner") == 1
    assert at(refusals, listener="submission", stage="data", rule="state_unavailable") == 1
    assert at(refusals, listener="submission", stage="connect", rule="max_connections") == 1
    assert at(refusals, listener="submission", stage="rcpt", rule="policy") == 0
    assert at("mss_relay_auth_attempts_total", result="failure") == 2
    failures = "mss_relay_upstream_failures_total"
    assert at(failures, stage="rcpt", kind="permfailed") == 1
    assert at(failures, stage="data", kind="tempfailed") == 1  # not the internal error
    assert at("mss_relay_message_size_bytes_count") == 3
    assert at("mss_relay_message_size_bytes_sum") == 2048 + 4096 + 9
    assert at("mss_relay_message_size_bytes_bucket", le="4000.0") == 2
    assert at("mss_relay_transaction_duration_seconds_count") == 2
    assert at("mss_relay_transaction_duration_seconds_sum") == pytest.approx(0.0525)


def test_reloads_are_counted_by_worker_0_only() -> None:
    # The events of the reload helper (issue 15): every worker logs its own.
    first, registry = tap()
    other, other_registry = tap(counts_reloads=False)
    for counter in (first, other):
        feed(counter, "reloaded", changed=["users", "limits"], restart_required=[])
        feed(counter, "reloaded", changed=[], restart_required=["workers"])
        feed(counter, "reload_failed", error="limits.max_recipients: must be between 1 and 100000")
    name = "mss_relay_config_reloads_total"
    assert values(registry)[name, (("result", "success"),)] == 2
    assert values(registry)[name, (("result", "failure"),)] == 1
    # Its series exist (at 0, as every known series) but never move.
    assert {v for key, v in values(other_registry).items() if key[0] == name} == {0}


def test_a_strange_event_is_not_counted_and_the_line_goes_on() -> None:
    counter, registry = tap()
    feed(counter, "transaction", listener="s", outcome="delivered", size="big", duration_ms=None)
    feed(counter, "decision")  # no fields at all
    seen = values(registry)
    assert seen["mss_relay_messages_total", (("listener", "s"), ("outcome", "delivered"))] == 1
    assert seen["mss_relay_message_size_bytes_count", ()] == 0


def test_the_logger_feeds_the_tap(tmp_path: Path) -> None:
    counter, registry = tap()
    writer = LineWriter(tmp_path / "log.jsonl")
    try:
        log = make_logger(writer, tap=counter).bind(listener="submission")
        log.info("auth", client="10.0.0.1", user="jdupont", result="success")
        log.info("decision", stage="mail", verdict="reject", rule="sender_owner")
    finally:
        writer.close()
    seen = values(registry)
    assert seen["mss_relay_auth_attempts_total", (("result", "success"),)] == 1
    key = (("listener", "submission"), ("rule", "sender_owner"), ("stage", "mail"))
    assert seen["mss_relay_refusals_total", key] == 1
    assert '"rule": "sender_owner"' in (tmp_path / "log.jsonl").read_text()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("submission", "submission"),
        ("max_connections", "max_connections"),
        (None, "none"),
        ("a@b.fr", "other"),
        ("10.1.2.3", "other"),
        ("fe80::1", "other"),
        ("mx.example", "mx.example"),
        ("two words", "other"),
    ],
)
def test_label(raw: object, shown: str) -> None:
    assert label(raw) == shown


def test_slots_count_what_is_taken() -> None:
    async def run() -> list[int]:
        slots = Slots(2)
        seen = [slots.busy]
        await slots.acquire()
        async with slots:
            seen.append(slots.busy)
        seen.append(slots.busy)
        slots.release()
        seen.append(slots.busy)
        return seen

    assert asyncio.run(run()) == [0, 2, 1, 0]


def test_two_instruments_in_one_process() -> None:
    first, second = Instruments(), Instruments()  # no duplicated timeseries
    first.auth.labels("failure").inc()
    assert first.registry is not second.registry
    assert "mss_relay_auth_attempts_total" not in REGISTRY._names_to_collectors


def test_known_series_exist_before_their_first_event() -> None:
    from prometheus_client import generate_latest

    text = generate_latest(Instruments().registry).decode()
    for line in (
        'mss_relay_auth_attempts_total{result="failure"} 0.0',
        'mss_relay_auth_attempts_total{result="unavailable"} 0.0',
        'mss_relay_upstream_failures_total{kind="tempfailed",stage="data"} 0.0',
        'mss_relay_upstream_failures_total{kind="permfailed",stage="rcpt"} 0.0',
        'mss_relay_config_reloads_total{result="failure"} 0.0',
        'mss_relay_config_reloads_total{result="success"} 0.0',
    ):
        assert line in text.splitlines(), line


class FakeWriter:
    def __init__(self, path: Path | None, healthy: bool) -> None:
        self.path, self.healthy = path, healthy


def test_health_is_read_in_process(tmp_path: Path) -> None:
    """A stopped server, a Unix socket's file removed, a required log not
    written: each named; no connection is made to any listener."""
    seen: list[int] = []

    async def run() -> tuple[int, list[list[str]]]:
        store = await ConversationStore.open(tmp_path / "state.sqlite3", pseudonyms=TEST_PSEUDONYMS)
        tcp = await asyncio.start_server(lambda r, w: seen.append(1), "127.0.0.1", 0)
        path = tmp_path / "milter.sock"
        unix = await asyncio.start_unix_server(lambda r, w: seen.append(1), str(path))
        try:
            port = tcp.sockets[0].getsockname()[1]
            up = ListenerConfig("submission", Role.SUBMISSION, "127.0.0.1", port, ListenerTls.NONE)
            milter = ListenerConfig("milter", Role.MILTER, "", 0, ListenerTls.NONE, path)
            listening = ((up, tcp), (milter, unix))
            log = FakeWriter(tmp_path / "log.jsonl", healthy=True)
            found = [await problems(listening, store, log)]
            tcp.close()
            path.unlink()
            log.healthy = False
            found.append(await problems(listening, store, log))
            path.write_text("")  # a file, not a socket
            found.append(await problems(listening, store))
            return port, found
        finally:
            tcp.close()
            unix.close()
            await store.close()

    port, (healthy, down, replaced) = asyncio.run(run())
    assert healthy == []
    assert down == [
        f"listener submission (127.0.0.1:{port}): not serving",
        f"listener milter (unix:{tmp_path / 'milter.sock'}): socket file gone",
        f"log {tmp_path / 'log.jsonl'}: not writable",
    ]
    assert replaced[1:] == [f"listener milter (unix:{tmp_path / 'milter.sock'}): socket file gone"]
    assert seen == []


def test_the_census_is_read_again_after_its_ttl(tmp_path: Path) -> None:
    class Store:
        calls = 0

        async def census(self) -> dict[str, int]:
            Store.calls += 1
            return {"open": Store.calls, "closed": 0}

    now = [100.0]

    async def run() -> list[int]:
        endpoint = Endpoint(MetricsConfig(), (), Store(), tmp_path, clock=lambda: now[0])
        shown = []
        for moment in (100.0, 110.0, 129.9, 130.0, 131.0):
            now[0] = moment
            status, _, body = await endpoint.answer("GET", "/metrics")
            assert status == "200 OK"
            (count,) = [
                s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples
                if s.name == "mss_relay_conversations" and s.labels["state"] == "open"
            ]
            shown.append(int(count))
        return shown

    assert asyncio.run(run()) == [1, 1, 1, 2, 2]
    assert Store.calls == 2
