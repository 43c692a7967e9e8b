"""Where the CPU work on a message runs: on the event loop up to INLINE_LIMIT
(the hop to a thread costs more than the work), in a worker thread above it
(a 60 MB body hash must not stall every other session)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mss_relay.front.ending import INLINE_LIMIT, message_work


def _thread_of(label: str, *, suffix: str) -> tuple[str, int]:
    return label + suffix, threading.get_ident()


@pytest.mark.parametrize(
    ("size", "inline"),
    [(0, True), (2048, True), (INLINE_LIMIT, True), (INLINE_LIMIT + 1, False)],
)
def test_small_messages_stay_on_the_loop_large_ones_go_to_a_thread(size: int, inline: bool) -> None:
    async def run() -> tuple[tuple[str, int], int]:
        result = await message_work(size, _thread_of, "sign", suffix="ed")
        return result, threading.get_ident()

    (value, worker), loop_thread = asyncio.run(run())
    assert value == "signed"
    assert (worker == loop_thread) is inline


def test_an_error_reaches_the_caller_either_way() -> None:
    def fails() -> None:
        raise ValueError("unsignable")

    for size in (1, INLINE_LIMIT + 1):
        with pytest.raises(ValueError, match="unsignable"):
            asyncio.run(message_work(size, fails))
