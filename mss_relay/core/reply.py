"""SMTP replies, each named once with the RFC that defines its codes.

Reply codes: RFC 5321 §4.2. Enhanced status codes: RFC 3463 (and RFC 4954 for
AUTH, RFC 3207 for STARTTLS). The texts are French because mail clients show
them to health professionals; code, logs and documentation stay in English.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# What the log's copy of a reply shows in place of a file's name (issue 17):
# the names senders give are patients' names (<date>_<type>_<NOM>_<prénom>.pdf).
MASKED_NAME = "[nom masque]"


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str
    # The file names the text quotes, for the client only: the log's copy
    # (logged()) shows MASKED_NAME instead. Not part of the reply's identity.
    names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad SMTP code {self.code}")
        if not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"bad enhanced code {self.enhanced!r} for {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be one line")

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str, names: tuple[str, ...] | None = None) -> Reply:
        """Another text; the names it quotes (by default those of this reply:
        a text with an id added still quotes them)."""
        return Reply(self.code, self.enhanced, text, self.names if names is None else names)

    def logged(self) -> str:
        """The reply as the log writes it: each name it quotes masked."""
        text = str(self)
        for name in self.names:
            if name:
                text = text.replace(f"« {name} »", MASKED_NAME).replace(name, MASKED_NAME)
        return text

    def name_digest(self) -> str | None:
        """A prefix of the SHA-256 of the (first) name quoted, to find the
        same file in other lines without writing its name; None without one."""
        if not self.names:
            return None
        return hashlib.sha256(self.names[0].encode("utf-8")).hexdigest()[:16]

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


# 2xx
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Expéditeur accepté")
RECIPIENT_OK = Reply(250, "2.1.5", "Destinataire accepté")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepté et transmis")

# 4xx: the client keeps the message and tries again later.
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Trop de destinataires pour ce message")
UPSTREAM_UNAVAILABLE = Reply(
    451, "4.4.1", "Serveur de l'opérateur MSSanté injoignable, réessayez plus tard"
)
UPSTREAM_TIMEOUT = Reply(
    451, "4.4.2", "Le serveur de l'opérateur MSSanté ne répond plus, réessayez plus tard"
)
DKIM_TEMPORARY = Reply(
    451, "4.4.3", "Vérification DKIM impossible pour le moment (DNS), réessayez plus tard"
)
INTERNAL_ERROR = Reply(451, "4.3.0", "Erreur interne temporaire, réessayez plus tard")
# RFC 3463 §3.4 (X.3.0, mail system status): the audit log cannot be written.
LOG_UNAVAILABLE = Reply(451, "4.3.0", "Journal d'audit indisponible, réessayez plus tard")
# RFC 3463 4.3.0: the conversation state cannot be read or written just now.
STATE_UNAVAILABLE = Reply(
    451, "4.3.0", "Suivi des conversations patient indisponible, réessayez plus tard"
)
# RFC 3463 4.3.0: the Annuaire Santé (state database) cannot answer just now.
DIRECTORY_UNAVAILABLE = Reply(451, "4.3.0", "Annuaire Santé indisponible, réessayez plus tard")
# The antivirus gave no verdict (clamd unreachable, too slow, an error): the
# client retries; a message is never sent on unscanned (antivirus.on_error).
SCANNER_UNAVAILABLE = Reply(451, "4.3.0", "Analyse antivirus indisponible, réessayez plus tard")
# RFC 3463 4.3.0: the counters the relays share (AUTH failures, sending rates,
# on PostgreSQL) cannot be read or counted just now: never an unchecked accept.
SHARED_STATE_UNAVAILABLE = Reply(
    451, "4.3.0", "État partagé des relais indisponible, réessayez plus tard"
)

AUTH_LOCKED = Reply(
    454, "4.7.0", "Trop d'échecs d'authentification : accès suspendu quelques minutes"
)
AUTH_BUSY = Reply(
    454, "4.7.0", "Trop de tentatives d'authentification en cours, réessayez dans un instant"
)
RATE_MESSAGES = Reply(
    450, "4.7.1", "Trop de messages envoyés en peu de temps : réessayez dans une minute"
)
RATE_RECIPIENTS = Reply(450, "4.7.1", "Trop de destinataires en une heure : réessayez plus tard")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Trop de connexions simultanées, réessayez plus tard")
BUSY = Reply(451, "4.3.2", "Trop de messages en cours de réception, réessayez plus tard")
TIMEOUT = Reply(421, "4.4.2", "Délai dépassé, connexion fermée")
# RFC 5321 §3.8, RFC 3463 §3.4 (X.3.2, system not accepting messages): the
# relay is stopping; the client keeps its message and tries again later.
SHUTTING_DOWN = Reply(421, "4.3.2", "Arrêt du relais en cours, réessayez plus tard")

# 5xx: permanent refusals.
# RFC 3463 §3.2: X.1.3, bad syntax of a destination (or sender) mailbox address.
ADDRESS_CONTROL_CHARACTER = Reply(501, "5.1.3", "Adresse invalide : caractère de contrôle")
# RFC 3463 §3.6: X.5.4, invalid command arguments.
PARAMETER_CONTROL_CHARACTER = Reply(501, "5.5.4", "Paramètre invalide : caractère de contrôle")
# RFC 3461 §4 (DSN parameters of MAIL and RCPT) and RFC 3463 §3.6 (X.5.4,
# invalid command arguments): a value outside the RFC's syntax.
DSN_RET_INVALID = Reply(501, "5.5.4", "Paramètre RET invalide : FULL ou HDRS attendu")
DSN_ENVID_INVALID = Reply(
    501,
    "5.5.4",
    "Paramètre ENVID invalide : xtext attendu (caractères imprimables sans espace,"
    " + et = codés +2B et +3D)",
)
# RFC 3461 §4.4: an ENVID is at most 100 characters.
DSN_ENVID_TOO_LONG = Reply(501, "5.5.4", "Paramètre ENVID trop long : 100 caractères au plus")
DSN_ORCPT_TOO_LONG = Reply(501, "5.5.4", "Paramètre ORCPT trop long : 500 caractères au plus")
DSN_NOTIFY_INVALID = Reply(
    501,
    "5.5.4",
    "Paramètre NOTIFY invalide : NEVER seul, ou SUCCESS, FAILURE, DELAY séparés par des virgules",
)
DSN_ORCPT_INVALID = Reply(
    501,
    "5.5.4",
    "Paramètre ORCPT invalide : type;adresse attendu (par exemple rfc822;nom@domaine),"
    " l'adresse en xtext",
)
NOT_TRUST_SPACE = Reply(
    550,
    "5.7.1",
    "Destinataire hors de l'espace de confiance MSSanté (adresses en mssante.fr uniquement)",
)
INVALID_INS = Reply(
    553,
    "5.1.3",
    "Matricule INS invalide : l'adresse patient doit être <matricule INS>@patient.mssante.fr",
)
SENDER_NOT_OWNED = Reply(
    553, "5.7.1", "Vous n'êtes pas autorisé à envoyer depuis cette boîte aux lettres"
)
BAD_FROM_HEADER = Reply(
    550, "5.6.0", "Le message doit comporter exactement un en-tête From: d'une seule adresse"
)
# RFC 7372 §3.1: 5.7.20, no passing DKIM signature found.
DKIM_REQUIRED = Reply(550, "5.7.20", "Message patient refusé : aucune signature DKIM valide")
DANGEROUS_ATTACHMENT = Reply(550, "5.7.1", "Pièce jointe refusée : type de fichier interdit")
MIME_UNREADABLE = Reply(
    550, "5.6.0", "Structure MIME du message illisible (parties imbriquées trop profondément)"
)
UNSIGNABLE = Reply(550, "5.6.0", "Message mal formé : impossible de le signer (DKIM)")
# RFC 3463 §3.8: X.7.1, delivery not authorized (the message's content: a
# signature of the antivirus matched it). malware_found() names the signature.
MALWARE_FOUND = Reply(550, "5.7.1", "Message refusé : contenu malveillant détecté")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message trop volumineux")
SENDER_NOT_TRUST_SPACE = Reply(
    550,
    "5.7.1",
    "Expéditeur hors de l'espace de confiance MSSanté (adresses en mssante.fr uniquement)",
)
SENDER_NOT_WHITELISTED = Reply(
    550,
    "5.7.1",
    "Expéditeur hors de l'espace de confiance MSSanté : domaine absent de la liste blanche MSSante",
)
# RFC 3463 §3.8: X.7.1, delivery not authorized (the server is not the domain's operator).
NOT_AN_OPERATOR = Reply(550, "5.7.1", "Le serveur émetteur n'est pas un opérateur MSSanté")
UNKNOWN_BAL = Reply(550, "5.1.1", "Boîte aux lettres inconnue ici")
# RFC 3463 §3.2: X.1.1, bad destination mailbox address (not in the Annuaire Santé).
NOT_IN_DIRECTORY = Reply(550, "5.1.1", "Adresse absente de l'Annuaire Santé")
CONVERSATION_NOT_OPENED = Reply(
    550,
    "5.7.1",
    "Aucune conversation ouverte par un professionnel : un patient ne peut que répondre"
    " à un message qu'un professionnel lui a envoyé",
)
CONVERSATION_CLOSED = Reply(
    550, "5.7.1", "La conversation a été close par le professionnel ([FIN])"
)
NOT_A_REPLY = Reply(
    550,
    "5.7.1",
    "Ce message ne répond à aucun message du professionnel : répondez au message reçu"
    " dans Mon espace santé",
)
WRONG_CONVERSATION_BAL = Reply(
    550, "5.7.1", "Cette réponse n'est pas adressée à la boîte aux lettres de la conversation"
)
ATTACHMENT_TOO_BIG = Reply(552, "5.3.4", "Pièce jointe trop volumineuse")
# RFC 5321 §4.5.5: the null reverse-path is for notifications only (RFC 3461
# delivery status, RFC 8098 read receipts, RFC 3834 automatic replies).
NULL_SENDER_RESERVED = Reply(
    553,
    "5.7.1",
    "Expéditeur vide (<>) réservé aux avis de remise, accusés de lecture et réponses automatiques",
)
NULL_SENDER_UNAUTHENTICATED = Reply(
    553, "5.7.1", "Expéditeur vide (<>) refusé : authentifiez-vous d'abord"
)
MDN_NOT_OURS = Reply(
    550,
    "5.7.1",
    "Accusé de lecture refusé : il ne se rapporte à aucun message envoyé à ce patient",
)


_ASCII_PUNCTUATION = str.maketrans(
    {"«": '"', "»": '"', "’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-", "\u00a0": " "}
)


def ascii_text(text: str) -> str:
    """RFC 5321 §4.2: reply text is printable US-ASCII (without SMTPUTF8, which
    we do not offer). French accents are folded (« MSSanté » -> "MSSante")."""
    if text.isascii() and text.isprintable():
        return text  # nothing to fold (aiosmtpd's and most of our replies)
    # « x » is French typography; "x" is its ASCII form, without the spaces.
    text = text.replace("« ", "«").replace(" »", "»").replace("\u00a0»", "»")
    folded = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCTUATION))
    return "".join(c for c in folded if 32 <= ord(c) < 127)


def dsn_repeated(keyword: str) -> Reply:
    """RFC 3461 §4: each DSN parameter at most once per command (X.5.4)."""
    return Reply(501, "5.5.4", f"Paramètre {keyword} répété : une seule fois par commande")


# The end of a message (issue 14): replies that quote the transaction's id,
# written once for the SMTP listener and the milter.
def internal_error(ref: str) -> Reply:
    """RFC 3463 §3.4: an unexpected failure of the relay, 451 4.3.0; the id
    finds its `internal_error` line in the log (the error's text is never sent)."""
    return INTERNAL_ERROR.with_text(f"Erreur interne temporaire, réessayez plus tard (id {ref})")


_QUOTED = re.compile(r"\(id [0-9A-Za-z]+\)$")


def quoted_id(line: str) -> bool:
    """Whether a reply's (last) line already ends with a quoted id."""
    return _QUOTED.search(line) is not None


def with_id(reply: Reply, ref: str) -> Reply:
    """A refusal that quotes the id of its log lines (issue 15): the
    transaction's txid within a transaction, the session's id before one
    (connection, EHLO, AUTH). A reply that quotes one already is unchanged."""
    if quoted_id(reply.text):
        return reply
    return reply.with_text(f"{reply.text} (id {ref})")


def with_id_line(line: str, ref: str) -> str:
    """with_id() on a reply line as sent: only the last (or only) line of a
    refusal (4xx, 5xx) gets the id; success and continuation lines do not."""
    if len(line) < 4 or line[0] not in "45" or not line[:3].isdigit() or line[3] == "-":
        return line
    if quoted_id(line):
        return line
    return f"{line} (id {ref})"


# A signature name as quoted to the client: clamd's names are ASCII words
# (« Win.Test.EICAR_HDB-1 », « Xyz.UNOFFICIAL »); anything else is replaced,
# and a name from a third-party database is bounded.
_SIGNATURE_NAME = re.compile(r"[^A-Za-z0-9._:/+-]")
SIGNATURE_NAME_LIMIT = 100


def signature_name(name: str) -> str:
    """A signature's name for a reply (and the log): printable ASCII only,
    at most SIGNATURE_NAME_LIMIT characters."""
    return _SIGNATURE_NAME.sub("_", name.strip())[:SIGNATURE_NAME_LIMIT] or "?"


def malware_found(name: str) -> Reply:
    """550 5.7.1, naming what the antivirus found (signature_name's form)."""
    return MALWARE_FOUND.with_text(f"{MALWARE_FOUND.text} ({signature_name(name)})")


def message_accepted(txid: str) -> Reply:
    """The upstream took the message: 250, with the id of its log lines."""
    return MESSAGE_ACCEPTED.with_text(f"Message accepté et transmis (id {txid})")


# Replies of the SMTP listener's protocol (front/smtp_protocol.py, front/smtp.py).
GOODBYE = Reply(221, "2.0.0", "Au revoir")
# RFC 5321 §4.5.3.1.6: a line of the message longer than 998 characters.
LINE_TOO_LONG = Reply(500, "5.6.0", "Ligne trop longue dans le message (998 caractères au plus)")
# RFC 4954 §4: an answer to a 334 challenge longer than a command line.
AUTH_RESPONSE_TOO_LONG = Reply(501, "5.5.2", "Réponse d'authentification trop longue")
# RFC 5321 §4.5.3.2.5 (DATA termination), §4.5.3.2: a server that gives up says 421.
DATA_TOO_SLOW = Reply(421, "4.4.2", "Transmission du message trop lente")
DATA_TIMEOUT = Reply(421, "4.4.2", "Délai de transmission du message dépassé")
