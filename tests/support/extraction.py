"""Generated Annuaire Santé extractions (`Extraction_Correspondance_MSSante`):
the 31 columns of the ANS format, PER and ORG BALs, accented names, some
addresses twice, as a .txt or a ZIP holding it."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The header line exactly as issue 16 gives it.
HEADER = (
    "Type de BAL|Adresse BAL|Type Identifiant PP|Identifiant PP|Identification nationale PP"
    "|Type identifiant structure|Identification Structure|Service de rattachement"
    "|Civilité d'exercice|Nom d'exercice|Prénom d'exercice|Catégorie profession"
    "|Libellé de catégorie profession|Code Profession|Libellé Profession|Code savoir-faire"
    "|Libellé savoir-faire|Dématérialisation|Raison Sociale structure BAL"
    "|Enseigne commerciale structure BAL|L2COMPLEMENTLOCALISATION structure BAL"
    "|L3COMPLEMENTDISTRIBUTION structure BAL|L4NUMEROVOIE structure BAL"
    "|L4COMPLEMENTNUMEROVOIE structure BAL|NL4TYPEVOIE structure BAL"
    "|L4LIBELLEVOIE structure BAL|L5LIEUDITMENTION structure BAL"
    "|L6LIGNEACHEMINEMENT structure BAL|Code postal structure BAL"
    "|Département structure BAL|Pays structure BAL"
)
COLUMNS = tuple(HEADER.split("|"))
assert len(COLUMNS) == 31

NAMES = ("Dupont", "Martin", "Lefèvre", "Hélène", "Bérénice", "Œuvray", "Müller", "N'Diaye")
FIRST = ("Jean", "Hélène", "Zoé", "François", "Anaïs", "Noël", "Jérôme", "Maëlle")
TOWNS = ("75013 PARIS", "69003 LYON", "13005 MARSEILLE", "31000 TOULOUSE", "97400 SAINT-DENIS")
PROFESSIONS = ("Médecin", "Infirmier", "Pharmacien", "Sage-Femme", "Masseur-Kinésithérapeute")


@dataclass(frozen=True)
class Bal:
    kind: str  # PER or ORG
    address: str
    last_name: str = ""
    first_name: str = ""
    profession: str = ""
    structure: str = ""
    town: str = ""
    specialty: str = ""

    def line(self, columns: Sequence[str] = COLUMNS) -> str:
        code_pp = "810000000001" if self.kind == "PER" else ""
        postal = self.town.split(" ")[0] if self.town else ""
        values = {
            "Type de BAL": self.kind,
            "Adresse BAL": self.address,
            "Type Identifiant PP": "8" if self.kind == "PER" else "",
            "Identifiant PP": code_pp,
            "Identification nationale PP": f"8{code_pp}" if code_pp else "",
            "Type identifiant structure": "1",
            "Identification Structure": "123456789",
            "Civilité d'exercice": "DR" if self.profession == "Médecin" else "",
            "Nom d'exercice": self.last_name,
            "Prénom d'exercice": self.first_name,
            "Libellé Profession": self.profession,
            "Libellé savoir-faire": self.specialty,
            "Dématérialisation": "Oui",
            "Raison Sociale structure BAL": self.structure,
            "L6LIGNEACHEMINEMENT structure BAL": self.town,
            "Code postal structure BAL": postal,
            "Département structure BAL": postal[:2],
            "Pays structure BAL": "FRANCE",
        }
        return "|".join(values.get(name, "") for name in columns)


def generated(count: int, *, duplicates_every: int = 50) -> Iterator[Bal]:
    """count rows: mostly PER, one in five ORG, every duplicates_every-th row
    an address given again (as in the real extractions)."""
    for i in range(count):
        if duplicates_every and i and i % duplicates_every == 0:
            yield Bal("PER", f"bal{i - 1}@hopital-{(i - 1) % 97}.mssante.fr", "Doublon", "Ligne")
            continue
        name, first = NAMES[i % len(NAMES)], FIRST[(i // 7) % len(FIRST)]
        town = TOWNS[i % len(TOWNS)]
        if i % 5 == 4:
            yield Bal(
                "ORG", f"bal{i}@hopital-{i % 97}.mssante.fr", structure=f"Clinique n°{i}", town=town
            )
            continue
        yield Bal(
            "PER",
            f"bal{i}@hopital-{i % 97}.mssante.fr",
            name,
            first,
            PROFESSIONS[i % len(PROFESSIONS)],
            f"Centre hospitalier n°{i % 1000}",
            town,
        )


def write(
    path: Path,
    bals: Iterable[Bal | str],
    *,
    columns: Sequence[str] = COLUMNS,
    zipped: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """The extraction at path (a ZIP holding `path.stem`.txt when zipped); a
    str among bals is written as a raw line."""
    text = path.with_suffix(".txt") if zipped else path
    with text.open("w", encoding=encoding, newline="") as out:
        out.write("|".join(columns) + "\r\n")
        for bal in bals:
            out.write((bal if isinstance(bal, str) else bal.line(columns)) + "\r\n")
    if not zipped:
        return path
    archive = path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(text, text.name)
    text.unlink()
    return archive
