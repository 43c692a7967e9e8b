"""What makes a liste blanche URL downloadable: checked once for
trust_space.whitelist_url, for « whitelist update --from », and for every
redirect the download is sent on, so that each says what is wrong in one
line instead of failing deep in http.client."""

from __future__ import annotations

import re
import urllib.parse

# Spaces and control characters: http.client refuses them (InvalidURL), and
# a URL copied with a stray space is the usual mistake.
_BLANK = re.compile(r"[\s\x00-\x1f\x7f]")


def url_problem(url: str) -> str | None:
    """None for an https:// URL naming a host; else what is wrong with it."""
    if not url.lower().startswith("https://"):
        return "must be an https:// URL"
    if _BLANK.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- parsed on access: ValueError for « :abc » or « :99999 »
    except ValueError as error:
        return f"is not a valid URL: {error}"
    if not parts.hostname:
        return "must name a host (https://HOST/...)"
    return None
