"""tui/ — the terminal UI; see docs/design.md."""
