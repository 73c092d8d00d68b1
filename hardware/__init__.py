"""lasnn."""
