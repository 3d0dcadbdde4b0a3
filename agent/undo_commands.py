"""`hybrid-agent sessions diff`, `undo` and `rewind`: a saved session's file changes, read from and
reverted through its undo journal, without loading the model.

The checks are the UI's (`/undo`, `/rewind`): tools/journal.py reverts a set of changes as one unit and
refuses, changing nothing, when a file no longer holds what the agent wrote (someone edited it since);
here `--force` overwrites such files. `rewind` works in place: the session's later turns are dropped
(`Store.truncate_session`); `sessions fork` is the way to keep them and branch instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable


def _open_store(args: argparse.Namespace) -> Any:
    """The session database: --db, else the settings' (as agent/commands.py opens it)."""
    from hybrid_agent.agent.config_commands import settle
    from hybrid_agent.memory import Store

    settle(args)
    return Store(args.db)


def _journal(store: Any, session_id: str) -> tuple[Any, Any]:
    """The session's undo journal and its workspace (the folder it works on), with entries of writes
    that a killed run never made dropped first, as a resume does."""
    from hybrid_agent.agent.journal import StoreJournal
    from hybrid_agent.agent.sessions import folder_gone
    from hybrid_agent.tools.journal import reconcile
    from hybrid_agent.tools.workspace import Workspace

    info = store.get_session(session_id)
    try:
        workspace = Workspace(info.workspace)
    except Exception:
        raise folder_gone(session_id, info.workspace) from None
    journal = StoreJournal(store, lambda _create: session_id)
    reconcile(journal, workspace, after_turn=info.latest_turn or 0)
    return journal, workspace


def _reverting(fn: Any) -> str:
    """`fn()`'s message; a refusal says how to force it."""
    from hybrid_agent.tools.errors import UndoError

    try:
        return str(fn())
    except UndoError as exc:
        text = str(exc)
        if text.startswith("undo refused"):
            text += " Or pass --force to overwrite them."
        raise AgentError(text) from None


def sessions_diff(store: Any, session_id: str, turn: int | None) -> int:
    """`sessions diff ID [--turn N]`: the unified diff on stdout (exact bytes when piped, terminal
    controls escaped on a terminal); a line on stderr when there is nothing to show."""
    from hybrid_agent.agent.session_diff import session_diff

    info = store.get_session(session_id)
    if turn is not None and not 1 <= turn <= (info.latest_turn or 0) + 1:
        raise AgentError(
            f"session {session_id} has turns 1 to {info.latest_turn or 0}; "
            f"`hybrid-agent sessions show {session_id[:8]}` lists them"
        )
    text = session_diff(store.file_changes(session_id), turn)
    if not text:
        what = "" if turn is None else f" in turn {turn}"
        print(f"hybrid-agent: no file changes{what} (undone changes are left out)", file=sys.stderr)
        return 0
    sys.stdout.write(printable(text) if sys.stdout.isatty() else text)
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from hybrid_agent.agent.session_ids import resolve_session_id
    from hybrid_agent.tools.journal import undo_last_turn

    with _open_store(args) as store:
        session_id = resolve_session_id(store, args.id)
        journal, workspace = _journal(store, session_id)
        print(printable(_reverting(lambda: undo_last_turn(journal, workspace, force=args.force))))
    return 0


def cmd_rewind(args: argparse.Namespace) -> int:
    from hybrid_agent.agent.session_ids import resolve_session_id
    from hybrid_agent.tools.journal import undo_after_turn

    with _open_store(args) as store:
        session_id = resolve_session_id(store, args.id)
        latest = store.get_session(session_id).latest_turn or 0
        if args.turn > latest:
            raise AgentError(f"session {session_id} has turns 0 to {latest}; rewind to one of them")
        lines = []
        if not args.state_only:  # files first: a refusal leaves the state where it is too
            journal, workspace = _journal(store, session_id)
            lines.append(_reverting(lambda: undo_after_turn(journal, workspace, args.turn, force=args.force)))
        if not args.files_only:
            if args.turn < latest:
                store.truncate_session(session_id, args.turn)
                kept = " (the files keep their later changes, which leave the undo journal)"
                lines.append(
                    f"rewound session {session_id} to turn {args.turn}: turns {args.turn + 1} to {latest} "
                    f"are gone{kept if args.state_only else ''}"
                )
            else:
                lines.append(f"session {session_id} is at turn {latest} already")
        for line in lines:
            print(printable(line))
    return 0
