"""Where a liste blanche comes from and how it replaces the one in force:
download (HTTPS, one CA), validation, the shrink guard, the atomic write.

Used by « mss-relay whitelist update » and by the running relay's own refresh
(worker 0, in a thread): both refuse the same files the same way.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mss_relay.trust.url import url_problem
from mss_relay.trust.whitelist import InvalidWhitelist, Whitelist, parse_whitelist

# The published list is about 2 MB; anything far larger is not it.
MAX_BYTES = 64 * 1024**2
DOWNLOAD_TIMEOUT = 60.0
# A new list removing more than this share of the listed domains is refused
# unless forced: a mirror once served 619 entries of 6,554.
MAX_REMOVED = 0.20


class UpdateRefused(Exception):
    """The list in force is kept; str(): the one-line reason."""


def https_context(ca: Path | None) -> ssl.SSLContext:
    """Verification on; with ca, that CA only (no system store beside it)."""
    if ca is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca))


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another valid https:// URL (urllib would
    follow one to plain http://, and the list would come unverified)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        problem = url_problem(newurl)
        if problem is not None:
            raise UpdateRefused(f"{req.full_url}: redirected to {newurl!r}, which {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, ca: Path | None, timeout: float) -> bytes:
    problem = url_problem(url)
    if problem is not None:
        raise UpdateRefused(f"{url}: {problem}")
    # Every hop goes through this HTTPS handler: whitelist_ca alone, each time.
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=https_context(ca)), _HttpsRedirects()
    )
    request = urllib.request.Request(url, headers={"User-Agent": "mss-relay"})
    try:
        with opener.open(request, timeout=timeout) as response:
            data: bytes = response.read(MAX_BYTES + 1)
            declared = response.headers.get("Content-Length", "")
    except OSError as error:  # URLError, ssl.SSLError, TimeoutError are OSErrors
        reason = getattr(error, "reason", error)
        raise UpdateRefused(f"{url}: download failed: {reason}") from None
    except (http.client.HTTPException, ValueError) as error:
        # IncompleteRead (a chunked body ended early), InvalidURL, a bad
        # header: what the network did, not a list to look at.
        raise UpdateRefused(f"{url}: download failed: {error!r}") from None
    # A body ended before its Content-Length is a connection cut, not a
    # published file: its missing end tags are not the tolerated defect.
    if declared.isdigit() and len(data) < int(declared):
        raise UpdateRefused(f"{url}: download cut short: {len(data)} of {declared} bytes received")
    return data


def fetch(source: str, ca: Path | None, timeout: float = DOWNLOAD_TIMEOUT) -> bytes:
    """The bytes of a file path or an https:// URL (blocking: call it in a thread)."""
    if "://" not in source:
        with open(source, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    else:
        data = _download(source, ca, timeout)
    if len(data) > MAX_BYTES:
        raise UpdateRefused(f"{source}: larger than {MAX_BYTES} bytes")
    return data


def load(path: Path) -> Whitelist:
    """The list of a file on disk (OSError, InvalidWhitelist)."""
    return parse_whitelist(path.read_bytes())


def removed_share(old: Whitelist, new: Whitelist) -> float:
    if not old.operators:
        return 0.0
    return len(old.domains - new.domains) / len(old.operators)


def install(path: Path, data: bytes) -> None:
    """Replace the file at once: a temporary file in the same folder, synced,
    then renamed over it (a reader sees the old file or the new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # public data, read by every worker
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True)
class Updated:
    whitelist: Whitelist
    removed: float  # share of the old list's domains gone (0 without an old list)
    replaced: bool  # False: the same bytes as the file in force, not rewritten


def update(
    path: Path,
    source: str,
    ca: Path | None,
    *,
    force: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> Updated:
    """Fetch, validate and install; UpdateRefused (the file untouched) when
    the new list does not parse or shrinks too much without force."""
    data = fetch(source, ca, timeout)
    try:
        new = parse_whitelist(data)
    except InvalidWhitelist as error:
        raise UpdateRefused(f"{source}: not a valid liste blanche: {error}") from None
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    except OSError as error:
        raise UpdateRefused(f"{path}: cannot read the list in force: {error.strerror}") from None
    removed = 0.0
    if current is not None:
        try:
            removed = removed_share(parse_whitelist(current), new)
        except InvalidWhitelist:
            removed = 0.0  # a broken file in force is no reference
        if removed > MAX_REMOVED and not force:
            raise UpdateRefused(
                f"{source}: would remove {removed:.0%} of the listed domains"
                f" (more than {MAX_REMOVED:.0%}): refused, the list in force is kept"
                " (--force to install it anyway)"
            )
        if current == data:
            return Updated(new, removed, replaced=False)
    install(path, data)
    return Updated(new, removed, replaced=True)
