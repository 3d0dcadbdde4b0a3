"""model/ — see ../shared/DESIGN.md."""
