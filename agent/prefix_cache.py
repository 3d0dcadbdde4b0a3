"""A new session's first tokens (the system prompt, the tool schemas, the project's instructions) are
read once per model and kept: later new sessions restore that state and read only their message.

That system segment is thousands of tokens: reading it costs seconds on a CPU, and on a 7B model
(docs/results.md, cold start). A mixin of the `Agent`, like agent/sessions.py.

Design choices:
- The prefix is found on the tokens, for any chat format: the tokens the first segment shares with
  the first segments of two other messages (`PROBES`), i.e. the system part and whatever the format
  puts before the message. The message's own first token is never in it.
- The key is a sha256 over the engine's fingerprint (model + tokenizer), its state layout, device and
  decode path, and the prefix token ids: another model, tokenizer, tool set or project instructions
  gives another key.
- Identical by construction: the first segment of a new session is always read as the prefix alone
  (restored, or read and stored), then the rest; a snapshot restores exactly the state it saved.
- Stored as a hidden session (meta `"hidden": true`, which `Store.list_sessions` leaves out) whose id
  is derived from the key, with one turn holding the state: the store's snapshots (chunked blobs,
  digests, `sessions check`, loads straight to the GPU) as they are. At most `KEEP` per database; the
  oldest are deleted when another is stored (`sessions gc` gives their space back).
- Only under full attention: with a window the state drops old pages, and the session's first
  snapshot must hold every page from its first token.
- Never in the way: a store that cannot be read or written here means the prefix is read as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.records import user_message
from hybrid_agent.memory import Store, StoreError

if TYPE_CHECKING:
    from hybrid_agent.agent.engine import Engine

PROBES = ("a", "b")
KEEP = 4
MIN_TOKENS = 16  # a shorter prefix is read, not stored
TITLE = "(the state after the system prompt)"


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class PrefixOps:
    engine: Engine
    store: Store
    workspace: Path

    if TYPE_CHECKING:  # agent/sessions.py's, on the same agent

        def _restore(self, session_id: str, turn: int, policy: Any = None) -> None: ...

        def _state_layout(self) -> dict[str, str] | None: ...

    def _prefix_of(self, ids: list[int], system: str, tools: list[dict[str, Any]]) -> tuple[int, str]:
        """(length, key) of the prefix of a new session's first segment `ids`; (0, "") for none."""
        if self.engine.window is not None:
            return 0, ""
        n = len(ids) - 1  # at least one token is read after the prefix (the logits come from it)
        for probe in PROBES:
            other = self.engine.encode(
                self.engine.chat.segment([], [user_message(probe)], system=system, tools=tools)
            )
            n = _common(ids[:n], other)
        if n < MIN_TOKENS:
            return 0, ""
        # The device and the engine's path too: a prefix read elsewhere would not be this read's numbers.
        where = [
            str(getattr(self.engine, "device", "")),
            bool(getattr(self.engine, "uses_decode_engine", False)),
        ]
        text = json.dumps([self.engine.fingerprint, self._state_layout(), where, ids[:n]], sort_keys=True)
        return n, hashlib.sha256(text.encode()).hexdigest()

    def _prefix_restore(self, key: str) -> bool:
        """Restore the stored state of `key` into the (fresh) engine; False when there is none."""
        sid = str(uuid.UUID(key[:32]))
        try:
            if self.store.get_session(sid).latest_turn != 1:
                return False
            self._restore(sid, 1)  # checks the fingerprint and the layout before the engine changes
        except (StoreError, AgentError):  # none yet, or unreadable: read the prefix instead
            return False
        return True

    def _prefix_store(self, key: str) -> None:
        """Keep the engine's state (just the prefix of `key`, read into a fresh state) for later."""
        sid = str(uuid.UUID(key[:32]))
        recurrent, pages = self.engine.snapshot(0)
        layout = self._state_layout()
        with contextlib.suppress(StoreError):
            with contextlib.suppress(StoreError):
                self.store.delete_session(sid)  # a row left without its turn by an interrupted write
            meta = {"hidden": True, "prefix_key": key, "window": None, "sinks": self.engine.sinks}
            self.store.create_session(
                TITLE, str(self.workspace), self.engine.fingerprint, meta, session_id=sid
            )
            self.store.save_turn(
                sid, 1, events=[], recurrent=recurrent, pages=pages, n_tokens=self.engine.n_tokens,
                meta={"state_layout": layout} if layout is not None else {},
            )  # fmt: skip
            for old in self.store.list_sessions(hidden=True)[KEEP:]:
                if "prefix_key" in old.meta:
                    self.store.delete_session(old.id)
