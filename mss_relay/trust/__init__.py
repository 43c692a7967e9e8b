"""Reference data of the MSSanté trust space (the ANS liste blanche), loaded,
validated and swapped here; the core only receives immutable views of it."""
