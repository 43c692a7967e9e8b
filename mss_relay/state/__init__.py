"""Persistent state in SQLite (aiosqlite), behind small store classes."""
