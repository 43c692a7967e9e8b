"""A local capture upstream for the demo: accepted messages become .eml files.

It answers like an upstream that accepts everything, so the relay runs its
whole proxy path; each message is written to a temporary name and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from mss_relay.delivery.outcome import StepResult, accepted


class CaptureUpstream:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def close_idle(self) -> None:
        """Nothing is kept open."""

    def session(self) -> CaptureSession:
        return CaptureSession(self.directory)


def _write(directory: Path, name: str, content: bytes, envelope: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.eml"
    temporary = directory / f".{name}.eml.tmp"
    temporary.write_bytes(content)
    (directory / f"{name}.json").write_text(json.dumps(envelope, indent=2) + "\n")
    temporary.replace(target)
    return target


class CaptureSession:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sender = ""
        self.recipients: list[str] = []

    # The demo's files keep the envelope only: DSN parameters are dropped.
    has_dsn = False

    async def mail(
        self, sender: str, options: Sequence[str], dsn: Sequence[str] = ()
    ) -> StepResult:
        self.sender, self.recipients = sender, []
        return accepted("250 capture: sender ok")

    async def rcpt(self, recipient: str, dsn: Sequence[str] = ()) -> StepResult:
        self.recipients.append(recipient)
        return accepted("250 capture: recipient ok")

    async def data(self, content: bytes, txid: str) -> StepResult:
        name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{txid}"
        envelope: dict[str, object] = {"sender": self.sender, "recipients": self.recipients}
        path = await asyncio.to_thread(_write, self.directory, name, content, envelope)
        return accepted(f"250 capture: written to {path.name}")

    async def reset(self) -> None:
        self.sender, self.recipients = "", []

    async def close(self) -> None:
        return None
