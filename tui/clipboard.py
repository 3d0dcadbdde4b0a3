"""Copy text: the terminal's clipboard (OSC 52, through Textual) and, because not every terminal
honours OSC 52 (and Textual captures the mouse, so selecting text by hand is awkward), the system
clipboard through whichever command-line tool is installed."""

from __future__ import annotations

import shutil
import subprocess

# Tried in order; the first one present wins. (wl-copy: Wayland, xclip/xsel: X11, pbcopy: macOS.)
SYSTEM_COPY_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("wl-copy",),
    ("xclip", "-selection", "clipboard"),
    ("xsel", "--clipboard", "--input"),
    ("pbcopy",),
    ("clip.exe",),
)


def copy_to_system_clipboard(text: str) -> str | None:
    """Copy with the first available tool; return its name, or None when none is installed or all failed."""
    for cmd in SYSTEM_COPY_COMMANDS:
        if shutil.which(cmd[0]) is None:
            continue
        try:
            subprocess.run(cmd, input=text.encode(), check=True, timeout=2, capture_output=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return cmd[0]
    return None
