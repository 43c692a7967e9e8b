"""Protocol front ends: bytes in, facts to the core, verdicts out as replies."""
