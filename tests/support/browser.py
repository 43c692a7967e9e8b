"""Headless Chromium (Debian's `chromium` package) driven by its command
line: no driver, no extra Python dependency. The page's console messages
come on stderr with --enable-logging=stderr (« INFO:CONSOLE:... »)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.tools import required

TIMEOUT = 120  # a cold start on a loaded 2-core machine takes a few seconds


def chromium() -> str:
    return required("chromium", "chromium-browser", package="chromium")


@dataclass(frozen=True)
class Loaded:
    dom: str  # the DOM once the page's scripts ran (--dump-dom)
    console: list[str]  # the page's console messages (errors included)


def _run(page: Path, profile: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # root in a container: no user namespace for the sandbox
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",  # one of the test's own: no shared profile lock
        "--enable-logging=stderr",
        "--v=0",
        *options,
        page.resolve().as_uri(),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, check=True, cwd=profile
    )


def load(page: Path, profile: Path) -> Loaded:
    done = _run(page, profile, "--dump-dom")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Loaded(done.stdout, console)


def screenshot(page: Path, profile: Path, png: Path, width: int, height: int) -> list[str]:
    """The page drawn into png; the console messages."""
    done = _run(
        page,
        profile,
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={png}",
    )
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
