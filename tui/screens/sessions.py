"""The session browser: every saved session with its title, workspace, turns, tokens and last use.

Type to search (title and workspace); enter resumes, f forks, r renames, d deletes (after a yes).
The screen does not talk to the agent itself: it is given a `SessionSource` (the app backs it with
the agent's model thread) and dismisses with what the user chose to open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from hybrid_agent.tui.screens.dialogs import ConfirmScreen, TextPromptScreen
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static


@dataclass(frozen=True)
class SessionRow:
    id: str
    title: str
    workspace: str
    turns: int
    tokens: int
    last_used: datetime | None


def _first(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return default


def session_row(info: Any) -> SessionRow:
    """Read memory's SessionInfo (or a dict of the same fields) without depending on its class."""
    return SessionRow(
        id=str(_first(info, "id", "session_id")),
        title=str(_first(info, "title", default="") or "untitled"),
        workspace=str(_first(info, "workspace", default="")),
        turns=int(_first(info, "latest_turn", "turns", "n_turns", default=0)),
        tokens=int(_first(info, "n_tokens", "tokens", default=0)),
        last_used=_first(info, "last_used", "updated_at", "created_at"),
    )


def relative_time(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "—"
    now = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


class SessionSource(Protocol):
    async def list_sessions(self) -> Sequence[Any]: ...
    async def rename_session(self, session_id: str, title: str) -> None: ...
    async def delete_session(self, session_id: str) -> None: ...


BrowserChoice = tuple[Literal["resume", "fork"], str]


class SessionBrowser(Screen[BrowserChoice | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose('resume')", "resume", priority=True),
        Binding("f", "choose('fork')", "fork"),
        Binding("r", "rename", "rename"),
        Binding("d", "delete", "delete"),
        Binding("slash", "search", "search"),
        Binding("escape", "close", "back"),
    ]

    def __init__(
        self,
        source: SessionSource,
        *,
        current_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.current_id = current_id
        self.clock = clock  # fixed in snapshot tests so 'last used' does not drift
        self.rows: list[SessionRow] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="browser"):
            yield Static("Sessions", id="browser-title")
            yield Input(placeholder="search title or workspace  (/)", id="search")
            yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
            yield Static(
                "[b]enter[/b] resume   [b]f[/b] fork   [b]r[/b] rename   [b]d[/b] delete   "
                "[b]/[/b] search   [b]esc[/b] back",
                id="browser-keys",
            )

    async def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("", "Title", "Turns", "Tokens", "Last used", "Workspace")
        await self.reload()
        table.focus()

    async def reload(self) -> None:
        try:
            self.rows = [session_row(s) for s in await self.source.list_sessions()]
        except Exception as exc:  # a broken database must not take the UI down
            self.notify(f"could not list sessions: {exc}", severity="error")
            self.rows = []
        self.rows.sort(key=lambda r: r.last_used or datetime.min.replace(tzinfo=UTC), reverse=True)
        self._fill(self.query_one("#search", Input).value)

    def _fill(self, query: str) -> None:
        table = self.query_one(DataTable)
        table.clear()
        q = query.lower().strip()
        now = self.clock() if self.clock else None
        for row in self.rows:
            if q and q not in row.title.lower() and q not in row.workspace.lower():
                continue
            table.add_row(
                "●" if row.id == self.current_id else "",
                row.title,
                str(row.turns),
                f"{row.tokens:,}",
                relative_time(row.last_used, now),
                row.workspace,  # last: long paths are cut at the edge, not the other columns
                key=row.id,
            )

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(DataTable).focus()

    def _selected(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(key.value)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Letters typed into the search box are text; enter there goes back to the list.
        typing = self.query_one("#search", Input).has_focus
        return not (typing and action in ("choose", "rename", "delete", "search"))

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_choose(self, what: Literal["resume", "fork"]) -> None:
        session_id = self._selected()
        if session_id is not None:
            self.dismiss((what, session_id))

    def _row(self, session_id: str) -> SessionRow:
        return next(r for r in self.rows if r.id == session_id)

    def action_rename(self) -> None:
        session_id = self._selected()
        if session_id is None:
            return

        async def done(title: str | None) -> None:
            if title:
                await self._guarded(self.source.rename_session(session_id, title), "rename")

        self.app.push_screen(TextPromptScreen("New title:", self._row(session_id).title), done)

    def action_delete(self) -> None:
        session_id = self._selected()
        if session_id is None:
            return
        if session_id == self.current_id:
            self.notify("this is the open session; resume or start another one first", severity="warning")
            return

        async def done(yes: bool | None) -> None:
            if yes:
                await self._guarded(self.source.delete_session(session_id), "delete")

        title = self._row(session_id).title
        self.app.push_screen(ConfirmScreen(f"Delete session '{title}' and its snapshots?"), done)

    async def _guarded(self, op: Awaitable[None], what: str) -> None:
        try:
            await op
        except Exception as exc:
            self.notify(f"could not {what}: {exc}", severity="error")
        await self.reload()
