"""memory/ — see ../shared/DESIGN.md."""
