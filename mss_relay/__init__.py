"""mss-relay: an SMTP relay and milter enforcing the MSSanté rules."""

__version__ = "0.1.0"
