"""The tamper-evident audit trail: the chain of the log's lines (chain.py),
its verification (verification.py), the relay's own daily files (rotation.py)."""
