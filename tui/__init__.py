"""tui/ — see ../shared/DESIGN.md."""
