"""A unified diff, each changed line highlighted in the language of the file it belongs to.

Pygments' diff lexer only colours whole lines; reading code in a review needs the code itself
highlighted, with the +/- marking on top. So each line is split into its marker and its body, the body
is highlighted with the file's lexer, and added/removed lines get a tinted background.
"""

from __future__ import annotations

from textual.content import Content
from textual.highlight import guess_language, highlight
from textual.widgets import Static

_ADDED = "on $success 20%"
_REMOVED = "on $error 20%"


def _file_of(diff: str) -> str | None:
    """The path named by the '+++ b/path' header (or '--- a/path' for a deletion)."""
    for line in diff.splitlines():
        if line.startswith("+++ ") or line.startswith("--- "):
            path = line[4:].strip().split("\t")[0]
            if path != "/dev/null":
                return path[2:] if path[:2] in ("a/", "b/") else path
    return None


def render_diff(diff: str, path: str | None = None) -> Content:
    """The diff as styled Content (theme variables resolve at render time, so light/dark both work)."""
    path = path or _file_of(diff)
    body_lines = [
        ln[1:] for ln in diff.splitlines() if ln[:1] in ("+", "-", " ") and ln[:3] not in ("+++", "---")
    ]
    language = guess_language("\n".join(body_lines), path) if path else "text"
    lines: list[Content] = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "diff ", "index ")):
            lines.append(Content.styled(line, "bold $text-muted"))
        elif line.startswith("@@"):
            lines.append(Content.styled(line, "$text-accent"))
        elif line[:1] in ("+", "-", " "):
            marker, body = line[:1], line[1:]
            code = highlight(body, language=language).rstrip("\n")
            content = Content.assemble((marker, "bold"), code)
            if marker == "+":
                content = content.stylize(_ADDED)
            elif marker == "-":
                content = content.stylize(_REMOVED)
            lines.append(content)
        else:
            lines.append(Content(line))
    return Content("\n").join(lines)


class DiffView(Static):
    """A read-only, syntax-highlighted unified diff."""

    def __init__(self, diff: str, path: str | None = None, **kwargs: object) -> None:
        super().__init__(render_diff(diff, path), **kwargs)  # type: ignore[arg-type]
        self.diff = diff
