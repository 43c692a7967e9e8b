"""The report as one self-contained HTML page: inline CSS, SVG charts drawn
here, one small inline script; nothing fetched (a Content-Security-Policy
forbids it, so that the page shows the same offline, from a mail attachment
or a shared drive).

The script only checks that the charts were laid out: it sets
data-charts-ready on <body> when every chart has a size and its marks (or
says it has no data), and window.onerror sets data-script-error. The
browser test reads both."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, tzinfo
from html import escape

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

COLOURS = {
    "delivered": "#2e7d32",
    "refused": "#c62828",
    "tempfailed": "#ef6c00",
    "upstream_refused": "#6a1b9a",
    "abandoned": "#9e9e9e",
    "opened": "#1565c0",
    "closed": "#78909c",
    "unpublished": "#f9a825",
    "deletion_warning": "#ef6c00",
    "to_delete": "#c62828",
    "rule": "#c62828",
    "sender": "#ad1457",
}
WIDTH = 880
_TOP, _BOTTOM, _LEFT = 16, 44, 48

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;
 color:#1c1c1c;background:#f5f6f8}
main{max-width:940px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.2em;margin:0 0 12px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.08)}
.period{color:#555;margin:0 0 8px}
.totals{display:flex;flex-wrap:wrap;gap:12px;padding:0;margin:0;list-style:none}
.totals li{flex:1 1 150px;background:#fff;border-radius:8px;padding:12px 16px;
 box-shadow:0 1px 2px rgba(0,0,0,.08)}
.totals b{display:block;font-size:1.7em}
table{border-collapse:collapse;width:100%;margin-top:12px;font-size:.95em}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e3e3}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:8px 0 0;padding:0;list-style:none}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;
 margin-right:6px;vertical-align:-1px}
.note{color:#555;font-size:.9em}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:inherit;font-size:12px;fill:#333}
"""

_GUARD = (
    "window.onerror=function(){document.body&&"
    "document.body.setAttribute('data-script-error','1');};"
)
# Every chart laid out (a size) with its marks drawn, or marked empty.
_CHECK = """
(function(){
 var charts=document.querySelectorAll('svg[data-chart]'),ok=charts.length>0;
 for(var i=0;i<charts.length;i++){
  var c=charts[i],box=c.getBoundingClientRect();
  var marks=c.querySelectorAll('[data-mark]').length;
  if(!(box.width>0&&box.height>0)||(marks===0&&!c.hasAttribute('data-empty'))){ok=false;}
  c.setAttribute('data-marks',String(marks));
 }
 if(ok){document.body.setAttribute('data-charts-ready',String(charts.length));}
})();
"""


def _axis_top(value: int) -> int:
    """The axis' top: four steps of a round size (1, 2 or 5 times a power
    of ten), so that every tick is a whole number."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if 4 * step * factor >= value:
                return 4 * step * factor
        step *= 10


def _legend(keys: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f'<li><span style="background:{COLOURS[k]}"></span>{escape(label)}</li>'
        for k, label in keys
    )
    return f'<ul class="legend">{items}</ul>'


def _empty(chart: str, label: str) -> str:
    return (
        f'<svg data-chart="{chart}" data-empty="1" viewBox="0 0 {WIDTH} 60" role="img"'
        f' aria-label="{escape(label)}"><text x="{WIDTH // 2}" y="34" text-anchor="middle">'
        "Aucune donnée sur la période</text></svg>"
    )


def day_bars(
    chart: str,
    label: str,
    days: Sequence[date],
    values: dict[date, Counter[str]],
    series: Sequence[tuple[str, str]],
    *,
    stacked: bool,
) -> str:
    """Bars per day: stacked (one bar of the series' sums) or side by side."""
    if not any(values[d][k] for d in days for k, _ in series):
        return _empty(chart, label)
    height = 240
    plot_w, plot_h = WIDTH - _LEFT - 8, height - _TOP - _BOTTOM
    peak = max(
        (sum(values[d][k] for k, _ in series) if stacked else max(values[d][k] for k, _ in series))
        for d in days
    )
    top = _axis_top(peak)
    slot = plot_w / len(days)
    parts = [
        f'<svg data-chart="{chart}" viewBox="0 0 {WIDTH} {height}" role="img"'
        f' aria-label="{escape(label)}">'
    ]
    for tick in range(5):  # the axis: 0, a quarter, ... the top
        value = top * tick / 4
        y = _TOP + plot_h - plot_h * tick / 4
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{fr_number(round(value))}</text>"
        )
    every = max(1, -(-len(days) // 15))  # at most some 15 dates under the axis
    gap = min(6.0, slot * 0.2)
    for i, day in enumerate(days):
        x = _LEFT + i * slot + gap / 2
        width = slot - gap
        base = float(_TOP + plot_h)
        for n, (key, name) in enumerate(series):
            count = values[day][key]
            if not count:
                continue
            h = plot_h * count / top
            if stacked:
                y, bx, bw = base - h, x, width
                base -= h
            else:
                bw = width / len(series)
                y, bx = _TOP + plot_h - h, x + n * bw
            parts.append(
                f'<rect data-mark="1" x="{bx:.1f}" y="{y:.1f}" width="{max(bw, 1):.1f}"'
                f' height="{h:.1f}" fill="{COLOURS[key]}"><title>{fr_date(day)} — '
                f"{escape(name)} : {fr_number(count)}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{height - _BOTTOM + 16}"'
                f' text-anchor="middle">{day:%d/%m}</text>'
            )
    parts.append("</svg>")
    return "".join(parts) + _legend(series)


def bars(
    chart: str, label: str, items: Sequence[tuple[str, int]], colour: str | Sequence[str]
) -> str:
    """Horizontal bars, one per item, its label on the left; one colour, or
    one per item."""
    if not items:
        return _empty(chart, label)
    row, label_w = 28, 330
    height = row * len(items) + 8
    top = max(v for _, v in items)
    plot_w = WIDTH - label_w - 60
    parts = [
        f'<svg data-chart="{chart}" viewBox="0 0 {WIDTH} {height}" role="img"'
        f' aria-label="{escape(label)}">'
    ]
    for i, (name, value) in enumerate(items):
        y = 4 + i * row
        w = max(plot_w * value / top, 2)
        short = name if len(name) <= 48 else name[:47] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(short)}</text>'
            f'<rect data-mark="1" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}"'
            f' fill="{colour if isinstance(colour, str) else colour[i]}">'
            f"<title>{escape(name)} : {fr_number(value)}</title></rect>"
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{fr_number(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[str | int]]) -> str:
    if not rows:
        return ""  # the chart above says « Aucune donnée »

    def cell(tag: str, value: str | int) -> str:
        if isinstance(value, int):
            return f'<{tag} class="n">{fr_number(value)}</{tag}>'
        return f"<{tag}>{escape(value)}</{tag}>"

    # A heading "#..." is a column of numbers, aligned right.
    header = "".join(
        f'<th class="n">{escape(h[1:])}</th>' if h.startswith("#") else f"<th>{escape(h)}</th>"
        for h in head
    )
    body = "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _section(ident: str, title: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{content}</section>'


def render_html(report: Report, generated: datetime, tz: tzinfo | None = None) -> str:
    """The page. Every text from the log is escaped; no address but a BAL's."""
    outcomes = list(OUTCOMES.items())
    refused = report.total("refused")
    totals = [
        ("Messages", report.total()),
        ("Transmis", report.total("delivered")),
        ("Refusés", refused),
        ("Conversations ouvertes", report.conversations_total("opened")),
        ("Conversations closes", report.conversations_total("closed")),
        ("BAL signalées (cycle de vie)", len(report.lifecycle)),
    ]
    cards = "".join(f"<li>{escape(t)}<b>{fr_number(v)}</b></li>" for t, v in totals)
    rules = report.refusals.most_common()
    senders = report.refused_senders.most_common(10)
    flags = Counter(row.flag for row in report.lifecycle)
    shown = [f for f in LIFECYCLE_FLAGS if flags[f]]
    sections = [
        _section(
            "messages",
            "Messages par jour, selon leur sort",
            day_bars(
                "messages",
                "Messages par jour",
                report.days,
                report.messages,
                outcomes,
                stacked=True,
            )
            + _table(MESSAGES_HEAD, message_rows(report)),
        ),
        _section(
            "refus",
            "Refus par règle",
            bars(
                "refusals",
                "Refus par règle",
                [(rule_label(r), n) for r, n in rules],
                COLOURS["rule"],
            )
            + _table(["Règle", "Identifiant", "#Refus"], [(rule_label(r), r, n) for r, n in rules]),
        ),
        _section(
            "expediteurs",
            "Expéditeurs les plus refusés (BAL de la structure)",
            bars("senders", "Expéditeurs refusés", senders, COLOURS["sender"])
            + _table(["BAL", "#Messages refusés"], senders)
            + f'<p class="note" id="filtre">Seules les BAL de la structure sont nommées.'
            f" {fr_number(report.hidden_senders)} message(s) refusé(s) d'autres expéditeurs"
            " (patients, autres structures) ne sont pas nommés : aucune adresse de patient"
            " ni INS n'apparaît dans ce rapport.</p>",
        ),
        _section(
            "conversations",
            "Conversations avec les patients, ouvertes et closes par jour",
            day_bars(
                "conversations",
                "Conversations par jour",
                report.days,
                report.conversations,
                [("opened", "Ouvertes"), ("closed", "Closes")],
                stacked=False,
            )
            + _table(
                ["Clôture", "#Conversations"],
                [(closing_label(h), n) for h, n in report.closings.most_common()],
            ),
        ),
        _section(
            "cycle-de-vie",
            "Cycle de vie des BAL",
            bars(
                "lifecycle",
                "BAL par signalement",
                [(LIFECYCLE_FLAGS[f], flags[f]) for f in shown],
                [COLOURS[f] for f in shown],
            )
            + _table(LIFECYCLE_HEAD, lifecycle_rows(report)),
        ),
    ]
    legend = "".join(f"<li>{escape(text)}</li>" for text in LEGEND)
    read = (
        f"{fr_number(report.lines)} lignes du journal lues sur la période"
        f" ({', '.join(report.files) or 'aucun fichier'})"
    )
    if report.skipped:
        read += f" ; {fr_number(report.skipped)} ligne(s) illisible(s) ignorée(s)"
    problems = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
    auth = (
        f"Authentification : {fr_number(report.auth_failures)} échec(s),"
        f" {fr_number(report.auth_locked)} tentative(s) sur compte verrouillé."
    )
    return (
        '<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';'
        " style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>mss-relay — rapport d'activité</title>"
        f"<style>{_STYLE}</style><script>{_GUARD}</script></head><body><main>"
        "<h1>Rapport d'activité du relais MSSanté</h1>"
        f'<p class="period">Période {escape(period_text(report, tz))} ·'
        f" généré le {fr_date(generated.astimezone(tz).date())}"
        f" à {generated.astimezone(tz):%H:%M}</p>"
        f'<ul class="totals">{cards}</ul>'
        + "".join(sections)
        + _section(
            "legende",
            "Légende et sources",
            f'<ul>{legend}</ul><p class="note">{escape(auth)}</p>'
            f'<p class="note" id="sources">{escape(read)}.</p>'
            + (f'<ul class="note">{problems}</ul>' if problems else ""),
        )
        + f"</main><script>{_CHECK}</script></body></html>\n"
    )
