"""tools/ — see ../shared/DESIGN.md."""
