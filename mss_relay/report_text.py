"""The report's figures as plain text, for a terminal or a mail: the same
sections, numbers and words as the HTML page (report_html.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, tzinfo

from mss_relay.report import (
    LEGEND,
    LIFECYCLE_FLAGS,
    LIFECYCLE_HEAD,
    MESSAGES_HEAD,
    OUTCOMES,
    Report,
    closing_label,
    fr_date,
    fr_number,
    lifecycle_rows,
    message_rows,
    period_text,
    rule_label,
)


def _table(head: Sequence[str], rows: Sequence[Sequence[str | int]]) -> list[str]:
    """Columns padded to their widest cell; numbers to the right."""
    cells = [[fr_number(v) if isinstance(v, int) else v for v in row] for row in rows]
    head = [h.removeprefix("#") for h in head]  # "#": a column of numbers (HTML)
    widths = [max(len(c) for c in column) for column in zip(head, *cells, strict=True)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(head))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def _heading(title: str) -> list[str]:
    return ["", title, "=" * len(title)]


def render_text(report: Report, generated: datetime, tz: tzinfo | None = None) -> str:
    outcomes = list(OUTCOMES.items())
    out = [
        "Rapport d'activité du relais MSSanté",
        f"Période {period_text(report, tz)}, généré le {fr_date(generated.astimezone(tz).date())}"
        f" à {generated.astimezone(tz):%H:%M}",
        "",
        f"Messages : {fr_number(report.total())}"
        + "".join(f" · {label} : {fr_number(report.total(k))}" for k, label in outcomes),
        f"Conversations : {fr_number(report.conversations_total('opened'))} ouverte(s),"
        f" {fr_number(report.conversations_total('closed'))} close(s)",
        f"Authentification : {fr_number(report.auth_failures)} échec(s),"
        f" {fr_number(report.auth_locked)} tentative(s) sur compte verrouillé",
    ]
    out += _heading("Messages par jour, selon leur sort")
    rows = message_rows(report)
    out += _table(MESSAGES_HEAD, rows) if rows else ["Aucun"]
    out += _heading("Refus par règle")
    rules = [(rule_label(r), r, n) for r, n in report.refusals.most_common()]
    out += _table(["Règle", "Identifiant", "Refus"], rules) if rules else ["Aucun"]
    out += _heading("Expéditeurs les plus refusés (BAL de la structure)")
    senders = report.refused_senders.most_common(10)
    out += _table(["BAL", "Messages refusés"], senders) if senders else ["Aucun"]
    out.append(
        f"Seules les BAL de la structure sont nommées : {fr_number(report.hidden_senders)}"
        " message(s) refusé(s) d'autres expéditeurs (patients, autres structures)"
        " ne sont pas nommés."
    )
    out += _heading("Conversations avec les patients, ouvertes et closes par jour")
    days: list[list[str | int]] = [
        [fr_date(d), report.conversations[d]["opened"], report.conversations[d]["closed"]]
        for d in report.days
        if report.conversations[d]
    ]
    out += _table(["Jour", "Ouvertes", "Closes"], days) if days else ["Aucune"]
    closings = [(closing_label(h), n) for h, n in report.closings.most_common()]
    out += ["", *_table(["Clôture", "Conversations"], closings)] if closings else []
    out += _heading("Cycle de vie des BAL")
    flags = Counter(row.flag for row in report.lifecycle)
    out += [f"{label} : {fr_number(flags[f])}" for f, label in LIFECYCLE_FLAGS.items()]
    lifecycle = lifecycle_rows(report)
    out += ["", *_table(LIFECYCLE_HEAD, lifecycle)] if lifecycle else []
    out += _heading("Légende et sources")
    out += [f"- {text}" for text in LEGEND]
    out.append(
        f"{fr_number(report.lines)} lignes du journal lues sur la période"
        f" ({', '.join(report.files) or 'aucun fichier'})"
        + (
            f" ; {fr_number(report.skipped)} ligne(s) illisible(s) ignorée(s)"
            if report.skipped
            else ""
        )
    )
    out += [f"- {p}" for p in report.problems]
    return "\n".join(out) + "\n"
