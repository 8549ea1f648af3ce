"""livedm: the thin client of livedmd (standard library only)."""
