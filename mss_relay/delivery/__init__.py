"""Forwarding to the upstream: the MSSanté operator's server, or a local capture."""
