"""ANS liste blanche files for tests, in the published format: about 6,500
entries, 5,000 domains and 400 operator DNs by default, with what real copies
have: mixed case, nested domains, DNs spaced differently, non-ASCII values, a
value over two lines, a domain repeated with several operators."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape

NAMESPACE = "https://listeblanche.mssante.fr/schema"
GENERATED = "2024-05-02T03:15:00+02:00"
# Listed in every generated list: the test configuration's own BAL domain,
# the test upstream's usual recipients, an apicrypt-style domain outside
# mssante.fr, and one written in mixed case.
ALWAYS = (
    "ch-exemple.mssante.fr",
    "chu-b.mssante.fr",
    "mssante.apicrypt.org",
    "interop-mssante.apicrypt.org",
    "UC-CMP.mssante.fr",
    "patient.mssante.fr",  # the patients' domain (Mon espace santé)
)


def operator_dn(i: int) -> str:
    """The i-th operator DN; spacing after commas varies, one is over two lines."""
    sep = ", " if i % 3 == 0 else ","
    region = "Bouches-du-Rhône (13)" if i % 2 else "Haute-Garonne (31)"
    dn = sep.join(
        (
            f"CN=mss{i}.operateur-{i % 97}.fr",
            f"OU={318310021300000 + i}",
            f"O=Opérateur Santé {i}",
            f"ST={region}",
            "C=FR",
        )
    )
    return dn.replace(",O=", ",\n    O=", 1) if i == 7 else dn


def generated_domains(count: int) -> list[str]:
    """ALWAYS, then domains nesting two to six labels under mssante.fr."""
    domains = list(ALWAYS)
    i = 0
    while len(domains) < count:
        depth = i % 4  # 0 to 3 labels above « ets-N.mssante.fr »: up to six labels
        labels = [f"svc{j}" for j in range(depth)] + [f"ets-{i}", "mssante", "fr"]
        name = ".".join(labels)
        domains.append(name.upper() if i % 11 == 0 else name)
        i += 1
    return domains[:count]


def entries(count: int = 6500, domains: int = 5000, dns: int = 400) -> list[tuple[str, str]]:
    """(Nom, DNCertificatOperateur): each domain once, then the first ones
    again with another operator until count."""
    names = generated_domains(domains)
    rows = [(name, operator_dn(i % dns)) for i, name in enumerate(names)]
    i = 0
    while len(rows) < count:
        rows.append((names[i % len(names)], operator_dn((i * 7 + 3) % dns)))
        i += 1
    return rows


def whitelist_xml(
    rows: Iterable[tuple[str, str]] | None = None,
    *,
    generated: str = GENERATED,
    close: bool = True,
) -> bytes:
    """The file's bytes; close=False leaves out the last two end tags (the
    defect seen on published copies)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<ListeBlancheMSSante xmlns="{NAMESPACE}">',
        f"  <DateDeGeneration>{generated}</DateDeGeneration>",
        "  <ListeDomaines>",
    ]
    for n, (name, dn) in enumerate(entries() if rows is None else rows):
        lines += [
            "    <Domaine>",
            f"      <Nom>{escape(name)}</Nom>",
            f"      <Description>Établissement n° {n} — messagerie</Description>",
            f"      <DNCertificatOperateur>{escape(dn)}</DNCertificatOperateur>",
            f"      <ResponsableContact>resp{n}@ets.fr</ResponsableContact>",
            "      <SupportContact>support@operateur.fr</SupportContact>",
            "      <DateMAJ>2024-04-30T10:00:00</DateMAJ>",
            "    </Domaine>",
        ]
    if close:
        lines += ["  </ListeDomaines>", "</ListeBlancheMSSante>"]
    return ("\n".join(lines) + "\n").encode()


def with_domains(extra: Sequence[str], count: int = 6500) -> bytes:
    """The default list plus extra domains (one entry each)."""
    rows = entries(count - len(extra)) + [(d, operator_dn(1)) for d in extra]
    return whitelist_xml(rows)
