"""Session operations of the `Agent`: new, resume, fork, rewind, undo, list, rename, delete.

A mixin so that agent/loop.py keeps to the turn itself. Call these between turns: while a turn runs
they raise `AgentBusyError`. From whatever thread they are called, they run on the agent's model
owner (agent/owner.py): they load and reset the engine's state, which only that thread touches.
Resume reads the latest snapshot (recurrent state + the cache pages the window needs) and the
session's events (the chat format needs the conversation, not the model).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_agent.agent.engine import check_fingerprint
from hybrid_agent.agent.errors import AgentBusyError, AgentError, StateLayoutError
from hybrid_agent.agent.hooks import HookOutcome, Hooks
from hybrid_agent.agent.owner import ModelOwner, owned
from hybrid_agent.agent.records import conversation_of
from hybrid_agent.agent.session_diff import git_head
from hybrid_agent.agent.session_ids import resolve_session_id
from hybrid_agent.memory import Event, SessionInfo, Store, StoreError, TurnOrderError
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.model.state import Page
from hybrid_agent.model.state_layout import TENSOR_PARALLEL_KEY
from hybrid_agent.tools.journal import reconcile
from hybrid_agent.tools.workspace import Workspace

if TYPE_CHECKING:
    from hybrid_agent.agent.engine import Engine
    from hybrid_agent.agent.events import ApprovalDecision
    from hybrid_agent.tools.registry import ToolRegistry


def title_of(message: str) -> str:
    """A session's title from its first message: the words of its first 60 characters."""
    return " ".join(message.split())[:60]


def folder_gone(session_id: str, folder: str | Path) -> AgentError:
    """The error for a session whose recorded folder is gone (a moved or deleted project)."""
    return AgentError(
        f"session {session_id} works on {folder}, which is not a folder any more (moved or deleted?); "
        f"to continue it on another folder: hybrid-agent --workspace DIR --resume {session_id[:8]}"
    )


class SessionOps:
    engine: Engine
    store: Store
    registry: ToolRegistry
    workspace: Path
    session_id: str
    turn: int
    _running: bool
    _saved_tokens: int
    _system: str | None
    _tools: list[dict[str, Any]]
    _history: list[ChatMessage]
    _always: dict[str, ApprovalDecision]
    _launch_policy: Policy
    model_owner: ModelOwner
    # A new session's row, not written yet: title, workspace, fingerprint, meta, created_at, and the
    # running turn's message (the title when none was given). None once written.
    _unwritten: dict[str, Any] | None
    hooks: Hooks | None
    _hook_start: HookOutcome
    _notes: list[Event]
    _after_plan: bool
    _flush_notes: Any  # agent/plan.py

    def _idle(self) -> None:
        if self._running:
            raise AgentBusyError("a turn is running; wait for it to end or cancel it first")

    @owned
    def new_session(self, title: str = "") -> str:
        self._idle()
        # A new session runs with the policy the agent was opened with, whatever the last resumed
        # session used; that policy is recorded, and a resume switches back to it.
        self._use_policy(self._launch_policy, "a new session")
        policy: dict[str, Any] = {"window": self.engine.window, "sinks": self.engine.sinks}
        head = git_head(self.workspace)  # what `git diff` compares the session's changes against
        if head is not None:
            policy["git_head"] = head
        session_id = str(uuid.uuid4())
        self.engine.reset()
        self._set_session(session_id, 0, None, [], [])
        # The row is written with the session's first durable change (its first file change or saved
        # turn, `_session_row`): a run killed before that leaves no empty session behind.
        self._unwritten = {
            "title": title,
            "workspace": str(self.workspace),
            "fingerprint": self.engine.fingerprint,
            "meta": policy,
            "created_at": datetime.now(UTC),
        }
        self._session_started("startup")
        return session_id

    def _session_started(self, source: str) -> None:
        """Run the SessionStart hooks (agent/hooks.py); what they did reaches the session's next turn."""
        if self.hooks is not None and self.hooks.wants("SessionStart"):
            self._hook_start = self.hooks.run("SessionStart", self.session_id, source=source)
        else:
            self._hook_start = HookOutcome()

    def _session_row(self, create: bool) -> str | None:
        """The current session's id once its database row exists; before, None (create=False), or the
        row is written now (create=True)."""
        new = self._unwritten
        if new is not None:
            if not create:
                return None
            self.store.create_session(
                new["title"] or new.get("message", ""),
                new["workspace"],
                new["fingerprint"],
                meta=new["meta"],
                session_id=self.session_id,
            )
            self._unwritten = None
        return self.session_id

    def _latest_saved(self) -> int:
        """The current session's latest saved turn in the database (0: none, or no row yet)."""
        if self._session_row(False) is None:
            return 0
        return self.store.get_session(self.session_id).latest_turn or 0

    @owned
    def resume(self, session_id: str, *, keep_workspace: bool = False) -> None:
        """Continue a saved session from its latest snapshot (its history is not re-read by the model).
        The tools move to the session's own folder: the model's state is about those files. With
        `keep_workspace` (the caller chose the folder, e.g. `--workspace` after a move) they stay.
        `session_id` may be a unique prefix of the id, as on the command line."""
        self._idle()
        session_id = resolve_session_id(self.store, session_id)
        info = self.store.get_session(session_id)
        check_fingerprint(session_id, info.model_fingerprint, self.engine.fingerprint)
        folder = self.workspace if keep_workspace else Path(info.workspace).resolve()
        if not folder.is_dir():  # checked before anything changes
            raise folder_gone(session_id, folder)
        moved = None
        if folder != self.workspace:  # the same rules in the new folder (its protected dirs)
            moved = Workspace(folder, protected=tuple(self.registry.workspace.protected))
        policy = session_policy(info)
        conv = conversation_of(self.store.events(session_id))
        if info.latest_turn is None:
            self._use_policy(policy, f"session {session_id}")
            self.engine.reset()
        else:
            self._restore(session_id, info.latest_turn, policy)
        if moved is not None:
            self.workspace, self.registry.workspace = folder, moved
        self._set_session(session_id, info.latest_turn or 0, conv.system, conv.tools, conv.messages)
        self._after_plan = conv.plan_mode  # its next message says plan mode is off (agent/plan.py)
        # A run killed mid-turn may have journaled a write it never made: drop such entries.
        reconcile(self.registry.journal, self.registry.workspace, after_turn=self.turn)
        self._session_started("resume")

    def _fork_for_turn(self, turn: int) -> str | None:
        """`turn` could not be saved because the database already has it: another process (this
        session open in a second window) saved that turn first. Move this agent to a session of its
        own for it: a fork at the turn both share (a new session when they share none), so neither
        turn is lost. Returns the session left behind; None (nothing changed) for any other cause."""
        left = self.session_id
        info = self.store.get_session(left)
        if (info.latest_turn or 0) < turn:
            return None
        if turn == 1:
            made = self.store.create_session("", info.workspace, info.model_fingerprint, meta=info.meta)
        else:
            made = self.store.fork_session(left, turn - 1)
        self.session_id = made.id
        return left

    @owned
    def _write_turn(self, turn: int, events: list[Event], meta: dict[str, Any]) -> str | None:
        """Save turn `turn` (its events, the state since the last save, `meta`) on the model's thread;
        returns the session it forked from when another process saved this turn number first."""
        sampler = getattr(self.engine, "sampler_state", None)  # optional in the Engine protocol
        if sampler is not None and (rng := sampler()) is not None:
            meta["sampler"] = rng
        if (layout := self._state_layout()) is not None:
            meta["state_layout"] = layout  # so a stored snapshot says how to read its tensors
        recurrent, pages = self.engine.snapshot(self._saved_tokens)
        record: dict[str, Any] = dict(
            events=events, recurrent=recurrent, pages=pages,
            n_tokens=self.engine.n_tokens, meta=meta,
        )  # fmt: skip
        self._session_row(True)
        forked_from = None
        try:
            self.store.save_turn(self.session_id, turn, **record)
        except TurnOrderError:
            # Someone saved this turn number first (the session open twice): keep both turns.
            forked_from = self._fork_for_turn(turn)
            if forked_from is None:
                raise
            self.journal.move_turn(self.session_id)  # the turn's file changes go with it
            self.store.save_turn(self.session_id, turn, **record)
        self.engine.mark_saved()
        if turn == 1:
            title = title_of(next((e.content for e in events if e.kind == "user"), ""))
            with contextlib.suppress(StoreError):
                if title and not self.store.get_session(self.session_id).title:
                    self.store.rename_session(self.session_id, title)
        return forked_from

    def fork(self, turn: int) -> str:
        """A new session whose history is this one's up to `turn`; it becomes the active one."""
        self._idle()
        if turn == 0:
            return self.new_session()
        info = self.store.fork_session(self.session_id, turn)
        self.resume(info.id, keep_workspace=True)  # a fork goes on where this session is now
        return info.id

    @owned
    def rewind(self, turn: int, revert_files: bool = False) -> str:
        """Go back to the end of `turn` (a fork, so nothing is lost); with `revert_files`, first undo
        the file changes made after it. Returns the new session's id."""
        self._idle()
        if revert_files:
            self.registry.undo_after_turn(turn)
        return self.fork(turn)

    @owned
    def undo(self) -> str:
        """Revert the newest file change the agent made; says what it did."""
        self._idle()
        return self.registry.undo_last()

    @owned
    def sessions(self) -> list[SessionInfo]:
        """The saved sessions, most recently updated first, after the open one if its row is not
        written yet (a UI lists the session it shows)."""
        saved = self.store.list_sessions()
        new = self._unwritten
        if new is None:
            return saved
        info = SessionInfo(
            id=self.session_id,
            title=new["title"],
            workspace=new["workspace"],
            model_fingerprint=new["fingerprint"],
            created_at=new["created_at"],
            updated_at=new["created_at"],
            parent_id=None,
            fork_turn=None,
            meta=dict(new["meta"]),
        )
        return [info, *saved]

    @owned
    def snapshot_bytes(self) -> int:
        """Bytes the active session's stored snapshots use (recurrent state + cache pages; blobs
        shared with forks included); 0 before its first turn is saved."""
        if self._session_row(False) is None:
            return 0
        return self.store.snapshot_bytes(self.session_id).get(self.session_id, 0)

    @owned
    def history(self) -> list[Event]:
        """The stored events of the active session, for a UI to redraw it."""
        if self._session_row(False) is None:
            return []
        return self.store.events(self.session_id)

    @owned
    def rename(self, session_id: str, title: str) -> None:
        if session_id == self.session_id and self._unwritten is not None:
            self._unwritten["title"] = title  # written with the row
            return
        self.store.rename_session(session_id, title)

    @owned
    def delete(self, session_id: str) -> None:
        """Delete a session; deleting the active one starts a new one."""
        self._idle()
        if session_id != self.session_id or self._session_row(False) is not None:
            self.store.delete_session(session_id)
        if session_id == self.session_id:
            self.new_session()

    def _set_session(
        self,
        session_id: str,
        turn: int,
        system: str | None,
        tools: list[dict[str, Any]],
        history: list[ChatMessage],
    ) -> None:
        self._flush_notes()  # to the session being left (agent/plan.py)
        self.session_id, self.turn = session_id, turn
        self._unwritten = None
        self._saved_tokens = self.engine.n_tokens
        self._system, self._tools, self._history = system, tools, history
        self._always.clear()
        self._hook_start = HookOutcome()  # what another session's SessionStart hooks said is not for this one
        self._notes, self._after_plan = [], False  # agent/plan.py

    def _restore(self, session_id: str, turn: int, policy: Policy | None = None) -> None:
        """Load `turn` of `session_id` into the engine, under `policy` (None: the engine's current one).
        Everything that can refuse runs before the engine changes."""
        window, sinks = policy if policy is not None else (self.engine.window, self.engine.sinks)
        # On a GPU the store copies verified chunks straight into device buffers (a pinned ring):
        # loading to the CPU first would add a pageable copy of the whole state.
        device = getattr(self.engine, "device", None)
        # The store refuses a snapshot of any other fingerprint; one from before tokenizers were
        # recorded is accepted when its model matches (`check_fingerprint` raises otherwise).
        stored = self.store.get_session(session_id).model_fingerprint
        check_fingerprint(session_id, stored, self.engine.fingerprint)
        snap = self.store.load_snapshot(
            session_id,
            turn,
            window=window,
            sinks=sinks,
            fingerprint=stored,
            device=device if isinstance(device, str) and device.startswith("cuda") else None,
        )
        self._check_layout(session_id, turn, snap.meta.get("state_layout"))
        self._use_policy(policy, f"session {session_id}")
        self.engine.restore(snap.recurrent, [Page(*p) for p in snap.pages])  # the store's triples
        set_sampler = getattr(self.engine, "set_sampler_state", None)  # optional in the Engine protocol
        if set_sampler is not None and "sampler" in snap.meta:
            set_sampler(snap.meta["sampler"])

    def _state_layout(self) -> dict[str, str] | None:
        layout = getattr(self.engine, "layout_metadata", None)  # optional in the Engine protocol
        return None if layout is None else dict(layout())

    def _check_layout(self, session_id: str, turn: int, stored: dict[str, str] | None) -> None:
        """Refuse a snapshot whose tensors were written in another layout than the loaded model reads
        (same weights, but e.g. a state stored value-first by another version): loading it would run
        on silently wrong numbers. Snapshots from before the layout was stored are read as they are.
        The tensor-parallel layout a snapshot was written in is no reason to refuse it: its tensors are
        in the full layout whatever the tp (model/state_layout.py)."""
        current = self._state_layout()
        if stored is None or current is None:
            return
        stored, current = _without_tp(stored), _without_tp(current)
        if stored == current:
            return
        key = next(k for k in sorted(stored.keys() | current.keys()) if stored.get(k) != current.get(k))
        raise StateLayoutError(
            f"session {session_id} turn {turn} was saved with another state layout than this model "
            f"reads ({key}: stored {stored.get(key)!r}, now {current.get(key)!r}); its tensors cannot be "
            "read as they are: resume it with the hybrid-agent version that wrote it, or start a new session"
        )

    def _use_policy(self, policy: Policy | None, what: str) -> None:
        """Run the engine with this attention policy (window, sinks); None keeps the current one.

        A session's numbers depend on its window: resumed under another one (say, the window of the
        engine the TUI happened to load) it would go on with different attention, silently. So the
        engine is rebuilt to the session's policy, or, if it cannot be, the resume is refused.
        """
        current = (self.engine.window, self.engine.sinks)
        if policy is None or policy == current:
            return
        rebuild = getattr(self.engine, "set_attention_policy", None)  # optional in the Engine protocol
        if rebuild is None:
            raise AgentError(
                f"{what} runs with {describe_policy(policy)} but this engine runs with "
                f"{describe_policy(current)} and cannot change it; reopen with "
                f"{policy_options(policy)} to continue it exactly"
            )
        rebuild(*policy)
        got = (self.engine.window, self.engine.sinks)
        if got != policy:
            rebuild(*current)  # the engine's state is empty now: the caller's session is reloaded
            if self.turn:
                self._restore(self.session_id, self.turn)
            raise AgentError(
                f"{what} runs with {describe_policy(policy)}, which this model cannot reproduce (it gives "
                f"{describe_policy(got)}); open it with the model and options it was made with"
            )


Policy = tuple[int | None, int]  # (attention window or None for full attention, sink tokens)


def session_policy(info: SessionInfo) -> Policy | None:
    """The policy a session was made with (its meta), or None for sessions that did not record one."""
    meta = info.meta or {}
    if "window" not in meta:
        return None
    window = meta["window"]
    return (None if window is None else int(window)), int(meta.get("sinks") or 0)


def describe_policy(policy: Policy) -> str:
    window, sinks = policy
    return "full attention" if window is None else f"an attention window of {window} tokens ({sinks} sinks)"


def policy_options(policy: Policy) -> str:
    window, sinks = policy
    return "no --window" if window is None else f"--window {window} --sinks {sinks}"


def _without_tp(layout: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in layout.items() if k != TENSOR_PARALLEL_KEY}
