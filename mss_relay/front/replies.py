"""aiosmtpd's own replies, given an enhanced status code (RFC 3463, as our
EHLO promises with ENHANCEDSTATUSCODES, RFC 2034) and a French text.

Replies built by mss-relay already carry both and pass through unchanged.
"""

from __future__ import annotations

import re

from mss_relay.core.reply import GOODBYE, LINE_TOO_LONG, MESSAGE_TOO_BIG, OK

# aiosmtpd's go-ahead to DATA (RFC 5321 §4.2.2 354: no enhanced code), as the
# relay sends it too when it receives the message itself.
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
DATA_GO_AHEAD_CODE = "354"
# RFC 5321 §3.8: the service closes the connection after this reply.
CLOSING_CODE = "421"
# EHLO keyword lines (RFC 4954 AUTH; RFC 2034 ENHANCEDSTATUSCODES; RFC 3461 DSN), which
# carry no enhanced code.
EHLO_AUTH = "250-AUTH"
EHLO_ENHANCED_STATUS_CODES = "250-ENHANCEDSTATUSCODES"
# RFC 3461: DSN parameters taken, and passed on to an upstream that takes them.
EHLO_DSN = "250-DSN"

# The greeting, the DATA go-ahead and AUTH challenges carry no enhanced code.
_BARE = {"220", DATA_GO_AHEAD_CODE, "334"}
_WITH_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

# (pattern on aiosmtpd's text, our reply); first match wins. \1 carries a detail along.
_STOCK: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), reply)
    for pattern, reply in (
        (r"^250 OK$", str(OK)),
        (r"^221 Bye$", str(GOODBYE)),
        (r"^220 Ready to start TLS$", "220 2.0.0 Prêt pour TLS"),
        (r"^235 2\.7\.0 ", "235 2.7.0 Authentification réussie"),
        (r"^454 TLS not available$", "454 4.7.0 TLS indisponible"),
        (r"^530 Must issue a STARTTLS", "530 5.7.0 Commencez par STARTTLS"),
        (r"^530 5\.7\.0 Authentication required", "530 5.7.0 Authentification requise"),
        (
            r"^538 5\.7\.11 ",
            "538 5.7.11 Chiffrement requis : utilisez STARTTLS avant de vous authentifier",
        ),
        (r"^535 5\.7\.8 ", "535 5.7.8 Identifiant ou mot de passe incorrect"),
        (r"^504 5\.5\.4 ", "504 5.5.4 Mécanisme d'authentification non pris en charge"),
        (r"^503 Already authenticated", "503 5.5.1 Déjà authentifié"),
        (r"^501 Not enough value", "501 5.5.4 Mécanisme d'authentification manquant"),
        (r"^501 Too many values", "501 5.5.4 Trop de paramètres"),
        (r"^501 5\.7\.0 Auth aborted", "501 5.7.0 Authentification abandonnée"),
        (r"^501 5\.5\.2 Can't", "501 5.5.2 Données d'authentification illisibles"),
        (r"^554 Command refused due to lack", "554 5.7.0 Commande refusée : échec de TLS"),
        (r"^503 Error: send (?:HELO|EHLO) first", "503 5.5.1 Envoyez d'abord EHLO"),
        (r"^503 Error: nested MAIL", "503 5.5.1 Commande MAIL déjà reçue"),
        (r"^503 Error: need MAIL", "503 5.5.1 Envoyez d'abord MAIL FROM"),
        (r"^503 Error: need RCPT", "503 5.5.1 Aucun destinataire accepté"),
        (r"^500 Error: bad syntax", "500 5.5.2 Erreur de syntaxe"),
        (r"^500 Command line too long", "500 5.5.2 Ligne de commande trop longue"),
        (r"^500 Error: strict ASCII", "500 5.6.7 Caractères non ASCII refusés"),
        (r"^500 Error: command .* not recognized", "500 5.5.1 Commande non reconnue"),
        (r"^500 Line too long", str(LINE_TOO_LONG)),
        (r"^502 5\.5\.1 Too many unrecognized", "502 5.5.1 Trop de commandes inconnues, au revoir"),
        (r"^502 ", "502 5.5.1 Commande non implémentée"),
        (r"^553 5\.1\.3 Error: malformed", "553 5.1.3 Adresse mal formée"),
        (r"^501 Error: BODY", "501 5.5.4 BODY accepte 7BIT ou 8BITMIME"),
        (r"^501 Error: SMTPUTF8", "555 5.5.4 SMTPUTF8 non pris en charge"),
        (
            r"^552 Error: message size exceeds",
            "552 5.3.4 Message trop volumineux (taille annoncée)",
        ),
        (r"^552 Error: Too much mail data", str(MESSAGE_TOO_BIG)),
        (r"^555 MAIL FROM parameters", "555 5.5.4 Paramètre de MAIL FROM non reconnu"),
        (r"^555 RCPT TO parameters", "555 5.5.4 Paramètre de RCPT TO non reconnu"),
        (r"^501 Syntax: (.*)$", r"501 5.5.4 Syntaxe : \1"),
        (r"^252 ", "252 2.5.0 Vérification impossible, le message sera tout de même accepté"),
    )
)


# Any of them: one regex call for the replies that are none (nearly all).
_ANY_STOCK = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in _STOCK))


def localize(status: str) -> str:
    """Our text and an enhanced code for one of aiosmtpd's stock replies."""
    if _ANY_STOCK.match(status):
        for pattern, reply in _STOCK:
            match = pattern.match(status)
            if match:
                return match.expand(reply)
    if _WITH_ENHANCED.match(status) or not status[:3].isdigit() or status[:3] in _BARE:
        return status
    code, rest = status[:3], status[4:]
    return f"{code} {code[0]}.0.0 {rest}".rstrip()
