"""The pure policy core: facts in, verdicts out. No I/O, no asyncio."""
