"""Sans-I/O HTTP semantics: header strings in, frozen dataclasses out (RFC 9110 §13, §14)."""
