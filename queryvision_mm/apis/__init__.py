"""High-level entry points used by the tools (MaO gallery extraction, index and search)."""
