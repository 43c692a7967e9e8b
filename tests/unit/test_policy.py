from __future__ import annotations

import pytest

from mss_relay.core.directory import DirectoryAnswer, DirectoryMode, DirectorySettings
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts, SessionFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import MessageInfo, PartInfo
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.reply import Reply, ascii_text
from mss_relay.core.verdict import Action, Verdict

POLICY = Policy(
    Limits(max_attachment_size=20 * 2**20, max_message_size=60 * 2**20, max_recipients=2),
    BalDirectory(
        [
            Bal("jean.dupont@ch.mssante.fr", BalType.NOMINATIVE, frozenset({"jd"})),
            Bal("accueil@ch.mssante.fr", BalType.ORGANISATIONNELLE, frozenset({"jd", "ms"})),
        ]
    ),
)


def _mail(
    sender: str = "jean.dupont@ch.mssante.fr", user: str | None = "jd", size: int | None = None
) -> MailFacts:
    return MailFacts(SessionFacts("127.0.0.1", "h", True, user, "submission"), sender, size)


@pytest.mark.parametrize(
    ("sender", "user", "accepted"),
    [
        ("jean.dupont@ch.mssante.fr", "jd", True),
        ("JEAN.DUPONT@CH.MSSANTE.FR", "jd", True),  # compared as Postfix's tables do
        ("jean.dupont@CH.MSSANTE.FR.", "jd", True),
        ("accueil@ch.mssante.fr", "ms", True),
        ("jean.dupont@ch.mssante.fr", "ms", False),
        ("jean.dupont@ch.mssante.fr", None, False),
        ("autre@ch.mssante.fr", "jd", False),
    ],
)
def test_sender_ownership(sender: str, user: str | None, accepted: bool) -> None:
    verdict = POLICY.evaluate_mail(_mail(sender, user))
    assert verdict.accepted is accepted
    if not accepted:
        assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (
            553,
            "5.7.1",
        )


def test_declared_size() -> None:
    assert POLICY.evaluate_mail(_mail(size=1000)).accepted
    verdict = POLICY.evaluate_mail(_mail(size=POLICY.limits.wire_size_limit + 1))
    assert verdict.reply is not None and verdict.reply.code == 552


@pytest.mark.parametrize(
    ("recipient", "count", "code"),
    [
        ("a@chu.mssante.fr", 0, None),
        ("a@gmail.com", 0, 550),
        ("a@evilmssante.fr", 0, 550),
        ("123@patient.mssante.fr", 0, 553),
        ("295109912611193@patient.mssante.fr", 0, None),
        ("a@chu.mssante.fr", 2, 452),
        ("a@gmail.com", 2, 550),  # permanent causes win over the count
    ],
)
def test_recipient_rules(recipient: str, count: int, code: int | None) -> None:
    verdict = POLICY.evaluate_rcpt(RcptFacts(_mail(), recipient, count))
    assert (verdict.reply.code if verdict.reply else None) == code


def _info(*sizes: tuple[str | None, int]) -> MessageInfo:
    parts = tuple(PartInfo("application/pdf", n, s, n is not None) for n, s in sizes)
    author = "jean.dupont@ch.mssante.fr"
    return MessageInfo(parts, None, None, (author,), None, None, 0, from_addresses=(author,))


@pytest.mark.parametrize(
    ("parts", "rule"),
    [
        ([("a.pdf", 20 * 2**20)], None),
        ([("a.pdf", 20 * 2**20 + 1)], "attachment_size"),
        ([("a.pdf", 19 * 2**20), ("b.pdf", 19 * 2**20), ("c.pdf", 19 * 2**20)], None),
        ([(f"{i}.pdf", 19 * 2**20) for i in range(4)], "message_size"),
        # Issue 13: a part without a name is held to the per-attachment limit too.
        ([(None, 61 * 2**20)], "attachment_size"),
        ([(None, 19 * 2**20) for _ in range(4)], "message_size"),
    ],
)
def test_attachment_and_message_sizes(
    parts: list[tuple[str | None, int]], rule: str | None
) -> None:
    facts = MessageFacts(_mail(), ("a@chu.mssante.fr",), 100, _info(*parts))
    verdict = POLICY.evaluate_message(facts)
    assert (None if verdict.accepted else verdict.rule) == rule
    if rule == "attachment_size":
        # Named by its file name, else by its type.
        shown = parts[0][0] or "application/pdf"
        assert verdict.reply is not None and f"« {shown} »" in verdict.reply.text


def test_verdict_and_reply_invariants() -> None:
    with pytest.raises(ValueError):
        Reply(550, "4.7.1", "x")
    with pytest.raises(ValueError):
        Reply(250, "2.0.0", "two\r\nlines")
    with pytest.raises(ValueError):
        Verdict.reject(Reply(451, "4.3.0", "x"), rule="r")
    with pytest.raises(ValueError):
        Verdict.tempfail(Reply(550, "5.0.0", "x"), rule="r")
    assert Verdict.accept().action is Action.ACCEPT


def test_ascii_text_folds_french() -> None:
    assert ascii_text("« MSSanté » n’est pas là") == '"MSSante" n\'est pas la'


def _headers(froms: tuple[str, ...], senders: tuple[str, ...] = (), user: str = "jd") -> Verdict:
    from mss_relay.core.message import inspect_message

    lines = [f"From: {f}" for f in froms] + [f"Sender: {s}" for s in senders]
    raw = ("\r\n".join([*lines, "To: a@chu.mssante.fr", "", "x", ""])).encode()
    facts = MessageFacts(_mail(user=user), ("a@chu.mssante.fr",), len(raw), inspect_message(raw))
    return POLICY.evaluate_message(facts)


@pytest.mark.parametrize(
    ("froms", "senders", "user", "expected"),
    [
        (("Jean Dupont <jean.dupont@ch.mssante.fr>",), (), "jd", None),
        (("JEAN.DUPONT@ch.mssante.fr",), (), "jd", None),
        (("Accueil <accueil@ch.mssante.fr>",), ("jean.dupont@ch.mssante.fr",), "jd", None),
        (("accueil@ch.mssante.fr",), (), "ms", None),
        # spoofing: a BAL of someone else, an unknown address, a display-name trick
        (("jean.dupont@ch.mssante.fr",), (), "ms", ("from_aligned", 553, "5.7.1")),
        (("dg@ch.mssante.fr",), (), "jd", ("from_aligned", 553, "5.7.1")),
        (
            ('"jean.dupont@ch.mssante.fr" <dg@ch.mssante.fr>',),
            (),
            "jd",
            ("from_aligned", 553, "5.7.1"),
        ),
        (
            ("accueil@ch.mssante.fr",),
            ("jean.dupont@ch.mssante.fr",),
            "ms",
            ("from_aligned", 553, "5.7.1"),
        ),
        # not exactly one From: with one address
        ((), (), "jd", ("single_from", 550, "5.6.0")),
        (
            ("jean.dupont@ch.mssante.fr", "jean.dupont@ch.mssante.fr"),
            (),
            "jd",
            ("single_from", 550, "5.6.0"),
        ),
        (
            ("jean.dupont@ch.mssante.fr, accueil@ch.mssante.fr",),
            (),
            "jd",
            ("single_from", 550, "5.6.0"),
        ),
        (("<>",), (), "jd", ("single_from", 550, "5.6.0")),
        (
            ("jean.dupont@ch.mssante.fr",),
            ("a@ch.mssante.fr", "b@ch.mssante.fr"),
            "jd",
            ("from_aligned", 550, "5.6.0"),
        ),
    ],
)
def test_header_alignment(
    froms: tuple[str, ...],
    senders: tuple[str, ...],
    user: str,
    expected: tuple[str, int, str] | None,
) -> None:
    verdict = _headers(froms, senders, user)
    if expected is None:
        assert verdict.accepted, verdict
    else:
        assert verdict.reply is not None
        assert (verdict.rule, verdict.reply.code, verdict.reply.enhanced) == expected


@pytest.mark.parametrize(
    ("mode", "answer", "code"),
    [
        (DirectoryMode.REFUSE, DirectoryAnswer(True), None),
        (DirectoryMode.REFUSE, DirectoryAnswer(False), 550),
        (DirectoryMode.WARN, DirectoryAnswer(False), None),
        # warn never refuses: an answer missing changes nothing (logged `unavailable`)
        (DirectoryMode.WARN, DirectoryAnswer(None, "never imported"), None),
        (DirectoryMode.REFUSE, DirectoryAnswer(None, "look-up timed out"), 451),
        (DirectoryMode.REFUSE, None, None),  # not looked up (a patient, also_accept)
        (DirectoryMode.OFF, DirectoryAnswer(False), None),
    ],
)
def test_directory_rule(
    mode: DirectoryMode, answer: DirectoryAnswer | None, code: int | None
) -> None:
    policy = Policy(POLICY.limits, POLICY.bals, directory=DirectorySettings(mode))
    facts = RcptFacts(_mail(), "a@chu.mssante.fr", 0, directory=answer)
    verdict = policy.evaluate_rcpt(facts)
    assert (verdict.reply.code if verdict.reply else None) == code
    if code == 550:
        assert verdict.reply is not None and verdict.reply.enhanced == "5.1.1"
        assert verdict.reply.text == "<a@chu.mssante.fr> : adresse absente de l'Annuaire Santé"
