"""Command palette (ctrl+p) entries for the same actions as the slash commands and keys."""

from __future__ import annotations

from collections.abc import Callable

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, action name on the app). Actions, not callables: the palette runs them the same way
# a key binding does, so both paths are tested together.
PALETTE_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("New session", "start a new session (/new)", "new_session"),
    ("Sessions", "browse, resume, fork, rename or delete saved sessions (/resume)", "sessions"),
    ("Fork session", "fork this session at its latest turn (/fork)", "fork"),
    ("Undo last file change", "revert the last edit the agent made (/undo)", "undo"),
    ("Tools", "list the tools the model can call (/tools)", "tools"),
    ("Model", "show the model, device and state (/model)", "model_info"),
    ("Status", "what the session uses: state, cache, disk, speed, time, git (/status)", "usage"),
    ("Project memory", "the AGENTS.md files the session read (/memory)", "memory"),
    ("Copy last answer", "copy the last answer to the clipboard (/copy)", "copy_answer"),
    ("Cycle approval mode", "ask → accept-edits → auto → plan (shift+tab)", "cycle_mode"),
    ("Accept plan", "leave plan mode and carry out the plan (ctrl+g)", "accept_plan"),
    ("Cancel turn", "stop the running turn; the session stays at its last snapshot", "cancel_turn"),
    ("Toggle light/dark", "switch between the light and dark theme", "toggle_dark"),
    ("Help", "key bindings and commands (/help)", "help"),
    ("Quit", "save and quit (/quit)", "quit"),
)


class AgentCommands(Provider):
    def _callback(self, action: str) -> Callable[[], object]:
        app = self.app
        return lambda: app.run_action(action)

    async def discover(self) -> Hits:
        for title, help_text, action in PALETTE_ENTRIES:
            yield DiscoveryHit(title, self._callback(action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in PALETTE_ENTRIES:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), self._callback(action), help=help_text)
