"""Scanners: asynchronous I/O with engines outside the relay, turning a
message's bytes into facts (core.facts) for the rules of the core to judge."""
