"""Patients' pseudonyms (mss_relay/pseudonym.py): the log's masking step, the
key file, and the state store's rows (by pseudonym, older ones migrated)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.config import ConfigError
from mss_relay.core.conversation import Change, Status
from mss_relay.core.reply import ATTACHMENT_TOO_BIG, with_id
from mss_relay.front.session import logged_reply
from mss_relay.log import LineWriter, make_logger
from mss_relay.pseudonym import KEY_BYTES, Pseudonyms, load_key
from mss_relay.state.conversations import ConversationStore, KeyMismatch
from mss_relay.state.database import MIGRATIONS
from tests.support.keys import TEST_PSEUDONYMS

P1 = "295109912611193@patient.mssante.fr"
INS1 = "295109912611193"
CORSICA = "253072B07300470"
DR = "jean.dupont@ch-exemple.mssante.fr"
KEYED = TEST_PSEUDONYMS


def test_a_pseudonym_is_keyed_and_stable() -> None:
    shown = KEYED.of(P1)
    assert shown.startswith("ins:") and shown.endswith("@patient.mssante.fr")
    assert len(shown.split("@")[0]) == len("ins:") + 16
    # Same INS however written: the address, the bare INS, another case.
    assert KEYED.of(INS1) + "@patient.mssante.fr" == shown
    assert KEYED.of(" 295109912611193@Patient.MSSante.FR ") == shown
    assert KEYED.of(CORSICA.lower()) == KEYED.of(CORSICA)
    # A pseudonym is its own pseudonym (admin commands take either).
    assert KEYED.of(shown) == shown
    # Another key, an unrelated pseudonym; a professional's address is no secret.
    assert Pseudonyms(b"o" * KEY_BYTES).of(P1) != shown
    assert KEYED.of(DR) == DR
    assert "k" * 8 not in repr(KEYED)


@pytest.mark.parametrize(
    "written",
    [
        f'"sender": "{P1}"',
        f'"recipients": ["{DR}", "{P1}"]',
        '"reply": "550 5.7.1 <295109912611193@patient.mssante.fr> : matricule INS invalide"',
        '"upstream": "550 5.1.1 295109912611193@PATIENT.MSSANTE.FR unknown"',
        '"x": "rfc822;295109912611193@patient.mssante.fr"',
        '"x": "a:295109912611193@patient.mssante.fr."',
        '"x": "295109912611193@patient.mssante.fr.example.com"',
    ],
)
def test_the_log_step_masks_every_patient_address(written: str) -> None:
    line = "{" + written + "}"
    masked = KEYED.mask(line)
    assert INS1 not in masked and INS1 not in masked.upper()
    assert KEYED.of_ins(INS1) in masked
    assert KEYED.mask(masked) == masked  # a pseudonym is not hashed again


def test_a_line_without_a_patient_is_returned_as_is() -> None:
    line = f'{{"event": "decision", "sender": "{DR}", "recipients": ["x@chu.mssante.fr"]}}'
    assert KEYED.mask(line) is line


@given(
    st.from_regex(r"\A[0-9]{5}(?:[0-9]{2}|2[AaBb])[0-9]{8}\Z"),
    st.text(alphabet=" <>\"';,()[]:=", max_size=3),
    st.text(alphabet=" <>\"';,()[]:.=", max_size=3),
    st.sampled_from(["patient.mssante.fr", "PATIENT.mssante.fr", "Patient.Mssante.Fr"]),
)
def test_no_ins_survives_the_log_step(ins: str, before: str, after: str, domain: str) -> None:
    line = json.dumps({"event": "x", "field": f"{before}{ins}@{domain}{after}"})
    assert ins.upper() not in KEYED.mask(line).upper()


def test_the_logger_writes_pseudonyms(tmp_path: Path) -> None:
    writer = LineWriter(tmp_path / "log.jsonl")
    make_logger(writer, finish=[KEYED.mask]).info("transaction", sender=DR, recipients=[P1])
    writer.close()
    text = (tmp_path / "log.jsonl").read_text()
    assert INS1 not in text and KEYED.of(P1) in text


def test_the_key_is_made_once_mode_600_and_read_again(tmp_path: Path) -> None:
    path = tmp_path / "var" / "pseudonym.key"
    first = load_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(path.read_bytes()) == KEY_BYTES
    assert load_key(path).of(P1) == first.of(P1)  # a restart: the same pseudonyms
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def _make(path: str, out: multiprocessing.Queue[str]) -> None:
    out.put(load_key(Path(path)).of(P1))


def test_processes_starting_together_make_one_key(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[str] = context.Queue()
    processes = [context.Process(target=_make, args=(str(path), out)) for _ in range(4)]
    for process in processes:
        process.start()
    seen = {out.get(timeout=60) for _ in processes}
    for process in processes:
        process.join(timeout=60)
    assert seen == {load_key(path).of(P1)}


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"k" * KEY_BYTES, 0o644, "has mode 644: it must be readable by its owner only (600)"),
        (b"short", 0o600, "holds 5 bytes, not a key of 32"),
    ],
)
def test_a_bad_key_file_is_a_config_error(
    tmp_path: Path, content: bytes, mode: int, message: str
) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_key(path)
    assert str(caught.value) == f"log.pseudonym_key_file: {path} {message}"


def test_a_missing_key_is_not_made_by_a_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such key file"):
        load_key(tmp_path / "pseudonym.key", create=False)
    assert not (tmp_path / "pseudonym.key").exists()


def _clear_database(path: Path) -> None:
    """A state database of schema 3 (before pseudonyms), with patients in clear."""
    with sqlite3.connect(path) as db:
        for statements in MIGRATIONS[:3]:
            for statement in statements:
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        now = "2026-11-23T00:00:00.000Z"
        for i, patient in enumerate([P1, f"{CORSICA.lower()}@patient.mssante.fr"], start=1):
            db.execute(
                "INSERT INTO conversations (id, bal, patient, opened_at, opened_by,"
                " last_activity_at) VALUES (?, ?, ?, ?, 'professional', ?)",
                [i, DR, patient, now, now],
            )
            db.execute(
                "INSERT INTO messages (message_id, conversation_id, direction, reply_to, at)"
                " VALUES (?, ?, 'out', ?, ?)",
                [f"<m{i}@x>", i, patient if i == 2 else None, now],
            )


def test_an_older_database_is_migrated_to_pseudonyms(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _clear_database(path)

    async def scenario() -> None:
        store = await ConversationStore.open(path, pseudonyms=KEYED)
        try:
            assert store.pseudonymized == 2
            assert (await store.lookup(P1, ["<m1@x>"])).status is Status.OPEN
            assert [r.patient for r, _ in await store.history(P1)] == [KEYED.of(P1)]
            await store.apply(Change(DR, P1, "<m3@x>", "out"), "dr")
        finally:
            await store.close()
        again = await ConversationStore.open(path, pseudonyms=KEYED)
        await again.close()
        assert again.pseudonymized == 0  # one way, once
        with pytest.raises(KeyMismatch):
            await ConversationStore.open(path, pseudonyms=Pseudonyms(b"o" * KEY_BYTES))

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT patient FROM conversations").fetchall()
        replies = db.execute("SELECT reply_to FROM messages WHERE reply_to IS NOT NULL").fetchall()
    corsican = KEYED.of(f"{CORSICA}@patient.mssante.fr")
    assert {r[0] for r in rows} == {KEYED.of(P1), corsican}
    assert replies == [(corsican,)]
    for name in ("s.db", "s.db-wal"):
        if (tmp_path / name).exists():
            raw = (tmp_path / name).read_bytes().upper()
            assert INS1.encode() not in raw and CORSICA.encode() not in raw


def test_a_reply_naming_a_file_is_logged_without_the_name() -> None:
    name = "CR_DUPONT_Jean_2026.pdf"
    reply = with_id(
        ATTACHMENT_TOO_BIG.with_text(f"Pièce jointe « {name} » trop volumineuse", (name,)), "ID1"
    )
    assert name in str(reply)  # the client's
    fields = logged_reply(reply)
    assert fields["reply"] == "552 5.3.4 Pièce jointe [nom masque] trop volumineuse (id ID1)"
    assert fields["attachment_sha256"] == hashlib.sha256(name.encode()).hexdigest()[:16]
    assert logged_reply("relay stopping during DATA") == {"reply": "relay stopping during DATA"}
    assert logged_reply(ATTACHMENT_TOO_BIG) == {"reply": str(ATTACHMENT_TOO_BIG)}


INS2 = "185057800608491"


@pytest.mark.parametrize(
    "value",
    [
        '"1850578 00608400"@patient.mssante.fr',  # quoted, spaced: no INS, still hidden
        f'550 5.1.3 <"{INS2}"@Patient.MSSante.fr> : refus',
        f'"a\\"b {INS2}"@patient.mssante.fr',
        f"{INS2}@patient-mssante.fr",
        f"{INS2}@[patient.mssante.fr]",
        f"{INS2}%patient.mssante.fr@ch-exemple.mssante.fr",
        f"<{INS2}.x@ch-exemple.mssante.fr>",
        f"ORCPT=rfc822;{INS2}",
        f"{CORSICA}@patient-mssante.fr",
        f"déjà {INS2}_x",  # not ASCII: the other way through
    ],
)
def test_an_ins_however_written_is_masked(value: str) -> None:
    line = json.dumps({"event": "decision", "recipient": value, "n": 1}, ensure_ascii=False)
    masked = KEYED.mask(line)
    for secret in (INS2, CORSICA, "1850578", "00608400"):
        assert secret not in masked, masked
    assert "ins:" in json.loads(masked)["recipient"]
    assert KEYED.mask(masked) == masked


def test_a_matricule_alone_is_its_own_pseudonym_and_the_line_stays_json() -> None:
    line = json.dumps({"mid": f"<{INS2}.x@h>", "n": int(INS2), "f": float(f"1.{INS2}")})
    masked = json.loads(KEYED.mask(line))
    assert masked["mid"] == f"<{KEYED.of_ins(INS2)}.x@h>"
    assert masked["n"] == KEYED.of_ins(INS2)  # a number: a string in its place
    assert masked["f"] == float(f"1.{INS2}")  # a float's digits: no matricule


@pytest.mark.parametrize(
    "digest",
    [
        # sha256 hex digests holding a valid matricule in a run of digits.
        f"{INS2}a" + "0" * 48,
        "ab" + INS2 + "c" * 47,
        "f" * 49 + INS2,
        f"{INS2}0",  # 16 hex, as attachment_sha256
        "1" + INS2,
    ],
)
def test_a_hash_is_never_altered(digest: str) -> None:
    line = json.dumps({"attachment_sha256": digest, "chain": digest, "ts": "2026-11-23T00:00:00Z"})
    assert KEYED.mask(line) is line


def test_a_quoted_local_part_has_the_pseudonym_of_its_unquoted_form() -> None:
    assert KEYED.of(f'"{INS2}"@patient.mssante.fr') == KEYED.of(f"{INS2}@patient.mssante.fr")
    line = json.dumps({"reply": f'550 <"{INS2}"@patient.mssante.fr>'})
    assert KEYED.of(f"{INS2}@patient.mssante.fr") in KEYED.mask(line)
    spaced = '"1850578 00608400"@patient.mssante.fr'
    assert KEYED.of(spaced) in KEYED.mask(json.dumps({"recipient": spaced}))


def test_a_message_id_is_masked_as_the_log_shows_it() -> None:
    mid = f"<{INS1}@patient.mssante.fr>"
    stored = KEYED.mask_text(mid)
    assert INS1 not in stored
    assert json.dumps({"message_id": stored}) == KEYED.mask(json.dumps({"message_id": mid}))
    plain = "<a1b2@ch-exemple.mssante.fr>"
    assert KEYED.mask_text(plain) is plain


def test_a_key_file_that_can_be_none_is_named_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a key file"):
        load_key(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"f is a file, not a directory"):
        load_key(tmp_path / "f" / "pseudonym.key")
