"""The loop's logic, driven by a scripted engine (tests/agent/conftest.py) over the real Store,
ToolRegistry and workspace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.errors import AgentBusyError, AgentError
from hybrid_agent.agent.events import (
    ApprovalDecision,
    ErrorEvent,
    TextDelta,
    ToolCallRequested,
    ToolResultEvent,
    TurnEnd,
)


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def run(agent: Any, text: str) -> list[Any]:
    return list(agent.send_sync(text))


def test_plain_turn_streams_text_and_saves_one_snapshot(make_agent, store) -> None:
    agent, engine = make_agent(["Hello there.<|end|>"])
    events = run(agent, "hi")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there."
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.saved and end.stop_reason == "end_of_turn"
    assert (end.turn, end.session_id, agent.turn) == (1, agent.session_id, 1)
    assert end.completion_tokens == len("Hello there.") + 1  # + the stop token
    assert end.state_tokens == engine.n_tokens == end.prompt_tokens + end.completion_tokens
    assert end.state_bytes == engine.state_bytes and end.window is None
    # The state holds the system segment, the user turn and exactly what the model wrote.
    assert engine.text.endswith("<|user|>hi<|end|><|assistant|>Hello there.<|end|>")
    assert engine.text.startswith("<|bos|><|system|>")
    kinds = [e.kind for e in store.events(agent.session_id)]
    assert kinds == ["system", "user", "assistant"]
    snap = store.load_snapshot(agent.session_id)
    assert (snap.turn, snap.n_tokens) == (1, engine.n_tokens)
    assert store.get_session(agent.session_id).title == "hi"


def test_only_the_new_segment_is_prefilled(make_agent) -> None:
    agent, engine = make_agent(["A<|end|>", "B<|end|>"])
    run(agent, "one")
    before = engine.n_tokens
    run(agent, "two")
    assert engine.prefill_log[-1] == "<|user|>two<|end|><|assistant|>"
    assert engine.n_tokens == before + (3 + len("two")) + 2  # 3 special ids + the text, then 'B<|end|>'


def test_a_written_token_is_shown_before_it_is_fed_back(make_agent) -> None:
    """The first token's text goes out before the first one-token step (on CUDA, the graph capture)."""
    agent, engine = make_agent(["Hello<|end|>"])
    shown, states = "", []

    def seen(e: Any) -> None:
        nonlocal shown
        if isinstance(e, TextDelta):
            shown += e.text
            states.append((len(shown), engine.n_tokens))

    agent.send_sync("hi", on_event=seen)
    prompt = engine.n_tokens - len("Hello") - 1  # at the end the state holds every token, the stop too
    assert engine.text.endswith("<|assistant|>Hello<|end|>")
    assert [k for k, _ in states] == [1, 2, 3, 4, 5]
    assert all(n == prompt + k - 1 for k, n in states)  # each token's text out before the token is read


def test_tool_round_runs_the_tool_and_prefills_its_result(make_agent) -> None:
    agent, engine = make_agent(["Reading." + call("read_file", path="a.txt"), "It says hello.<|end|>"])
    events = run(agent, "what is in a.txt?")
    req = next(e for e in events if isinstance(e, ToolCallRequested))
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert (req.tool, req.arguments, req.needs_approval) == ("read_file", {"path": "a.txt"}, False)
    assert res.call_id == req.call_id and not res.is_error and "hello from a" in res.text
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Reading.It says hello."  # markup never reaches the screen
    assert f"<|tool_result|>{res.text}<|/tool_result|><|assistant|>It says hello.<|end|>" in engine.text
    assert events[-1].stop_reason == "end_of_turn"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('<|tool_call|>{"name": "read_file", "arguments": {"path": }<|/tool_call|>', "not valid JSON"),
        (call("no_such_tool"), "unknown tool"),
        (call("read_file", nope=1), "Invalid arguments for read_file"),
        ('<|tool_call|>{"name": "read_file"<|end|>', "not closed"),
    ],
)
def test_bad_calls_become_error_results_the_model_reads(make_agent, reply: str, expected: str) -> None:
    agent, engine = make_agent([reply, "Sorry.<|end|>"])
    events = run(agent, "go")
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert res.is_error and expected in res.text
    assert f"<|tool_result|>{res.text}<|/tool_result|><|assistant|>Sorry.<|end|>" in engine.text
    assert isinstance(events[-1], TurnEnd) and events[-1].saved


def test_denied_without_an_approver(make_agent, workspace: Path) -> None:
    agent, engine = make_agent([call("write_file", path="b.txt", content="x"), "OK.<|end|>"])
    events = run(agent, "write b")
    req = next(e for e in events if isinstance(e, ToolCallRequested))
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert req.needs_approval and req.diff is not None and req.path == "b.txt"
    assert res.denied and res.is_error and "did not approve" in res.text
    assert not (workspace / "b.txt").exists()
    assert res.text in engine.text


def test_approval_callback_decides_and_always_sticks(make_agent, workspace: Path) -> None:
    asked: list[str] = []

    async def approve(req: ToolCallRequested) -> ApprovalDecision:
        asked.append(req.arguments["path"])
        return ApprovalDecision(allow=True, always=True)

    replies = [
        call("write_file", path="b.txt", content="one"),
        call("write_file", path="c.txt", content="two"),
        "Done.<|end|>",
    ]
    agent, _ = make_agent(replies, approval=approve)
    events = run(agent, "write")
    assert asked == ["b.txt"]  # the second call was allowed by "always"
    assert (workspace / "b.txt").read_text() == "one" and (workspace / "c.txt").read_text() == "two"
    reqs = [e for e in events if isinstance(e, ToolCallRequested)]
    assert [r.needs_approval for r in reqs] == [True, False]


def test_reject_always_sticks_for_that_tool_for_the_session(make_agent, workspace: Path) -> None:
    asked: list[str] = []

    async def refuse_writes(req: ToolCallRequested) -> ApprovalDecision:
        asked.append(req.tool)
        return ApprovalDecision(allow=False, always=True, reason="no writes today")

    replies = [
        call("write_file", path="b.txt", content="one"),
        call("write_file", path="c.txt", content="two"),
        call("read_file", path="a.txt"),  # another tool is not affected
        "Fine.<|end|>",
        call("edit_file", path="a.txt", old_string="hello", new_string="bye"),  # nor is another asking tool
        call("write_file", path="d.txt", content="three"),  # next turn: still refused
        "OK.<|end|>",
    ]
    agent, engine = make_agent(replies, approval=refuse_writes)
    events = run(agent, "write twice")
    assert asked == ["write_file"]  # asked once; the second write was refused without asking
    reqs = [e for e in events if isinstance(e, ToolCallRequested)]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [r.needs_approval for r in reqs] == [True, False, False]
    assert [(r.denied, r.is_error) for r in results] == [(True, True), (True, True), (False, False)]
    assert "(no writes today)" in results[0].text and "rest of this session" in results[0].text
    assert "rest of this session" in results[1].text and "hello from a" in results[2].text
    events = run(agent, "edit, then write")
    assert asked == ["write_file", "edit_file"]  # edit_file asked, write_file not again
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [(r.tool, r.denied) for r in results] == [("edit_file", True), ("write_file", True)]
    assert sorted(p.name for p in workspace.iterdir()) == ["a.txt"]
    assert (workspace / "a.txt").read_text() == "hello from a\n"
    for r in results:
        assert f"<|tool_result|>{r.text}<|/tool_result|>" in engine.text  # the model read the refusals
    # "Always" lasts one session: a new one asks again.
    agent.new_session()
    engine.replies += [call("write_file", path="e.txt", content="x"), "Done.<|end|>"]
    run(agent, "write e")
    assert asked[-1] == "write_file" and len(asked) == 3


def test_rejection_reason_goes_back_to_the_model(make_agent) -> None:
    async def reject(req: ToolCallRequested) -> ApprovalDecision:
        return ApprovalDecision(allow=False, reason="not that file")

    agent, engine = make_agent([call("write_file", path="b.txt", content="x"), "OK.<|end|>"], approval=reject)
    run(agent, "go")
    assert "(not that file)" in engine.text


@pytest.mark.parametrize(("mode", "asked"), [("ask", True), ("accept-edits", False), ("auto", False)])
def test_modes(make_agent, workspace: Path, mode: str, asked: bool) -> None:
    agent, _ = make_agent([call("write_file", path="b.txt", content="x"), "OK.<|end|>"], mode=mode)
    events = run(agent, "go")
    assert next(e for e in events if isinstance(e, ToolCallRequested)).needs_approval is asked
    assert (workspace / "b.txt").exists() is not asked


def test_max_tool_rounds(make_agent) -> None:
    agent, _ = make_agent([call("read_file", path="a.txt")] * 5, max_tool_rounds=2)
    events = run(agent, "loop")
    assert sum(isinstance(e, ToolResultEvent) for e in events) == 2
    assert events[-1].stop_reason == "max_tool_rounds" and events[-1].saved


def test_max_new_tokens_then_the_next_segment_closes_the_message(make_agent) -> None:
    agent, engine = make_agent(["x" * 50, "fine<|end|>"], max_new_tokens=10)
    events = run(agent, "long")
    assert events[-1].stop_reason == "max_tokens" and events[-1].completion_tokens == 10
    run(agent, "next")
    assert engine.prefill_log[-1] == "<|end|><|user|>next<|end|><|assistant|>"


def test_cancel_mid_generation_leaves_the_last_snapshot(make_agent, scripted_engine) -> None:
    agent, engine = make_agent(["First.<|end|>", "a long answer that will be cut<|end|>", "Third.<|end|>"])
    run(agent, "one")
    saved_tokens = list(engine.tokens)
    engine.step_hook = lambda n: agent.cancel() if n > len(saved_tokens) + 15 else None
    events = run(agent, "two")
    end = events[-1]
    assert isinstance(end, TurnEnd) and not end.saved and end.stop_reason == "cancelled"
    assert any(isinstance(e, TextDelta) for e in events)  # it was mid-generation
    assert agent.turn == 1 and engine.tokens == saved_tokens
    engine.step_hook = None
    run(agent, "three")
    # Same as a session where the cancelled turn never happened.
    ref_agent, ref = make_agent(["First.<|end|>", "Third.<|end|>"])
    run(ref_agent, "one")
    run(ref_agent, "three")
    assert engine.text == ref.text and agent.turn == 2


def test_consumer_leaving_mid_turn_rolls_back(make_agent) -> None:
    agent, engine = make_agent(["First.<|end|>", "0123456789<|end|>"])
    run(agent, "one")
    saved = list(engine.tokens)

    async def leave_early() -> None:
        gen = agent.send("two")
        async for ev in gen:
            if isinstance(ev, TextDelta):
                break
        await gen.aclose()

    asyncio.run(leave_early())
    assert engine.tokens == saved and agent.turn == 1 and not agent.running


def test_resume_restores_the_state_and_history(make_agent, store) -> None:
    agent, engine = make_agent(["One.<|end|>", "Two.<|end|>"])
    run(agent, "a")
    run(agent, "b")
    other, engine2 = make_agent([], session_id=agent.session_id)
    assert engine2.tokens == engine.tokens and other.turn == 2
    assert [e.kind for e in other.history()] == ["system", "user", "assistant", "user", "assistant"]


def test_fork_rewind_undo_with_the_file_journal(make_agent, workspace: Path, store) -> None:
    replies = ["Hi.<|end|>", call("write_file", path="a.txt", content="changed\n"), "Wrote.<|end|>",
               call("write_file", path="n.txt", content="new\n"), "Again.<|end|>"]  # fmt: skip
    agent, engine = make_agent(replies, mode="auto")
    run(agent, "hello")
    after_one = list(engine.tokens)
    run(agent, "change a")
    run(agent, "make n")
    assert (workspace / "a.txt").read_text() == "changed\n" and (workspace / "n.txt").exists()
    changes = store.file_changes(agent.session_id)
    assert [(c.turn, c.path) for c in changes] == [(2, "a.txt"), (3, "n.txt")]
    assert "n.txt" in agent.undo()  # the newest change
    assert not (workspace / "n.txt").exists()
    old = agent.session_id
    new = agent.rewind(1, revert_files=True)
    assert new == agent.session_id != old and agent.turn == 1
    assert (workspace / "a.txt").read_text() == "hello from a\n"
    assert engine.tokens == after_one
    forked = agent.fork(0)
    assert agent.turn == 0 and engine.n_tokens == 0 and forked == agent.session_id


def test_a_template_that_rewrites_history_is_an_error_and_rolls_back(make_agent) -> None:
    from hybrid_agent.model.chat_jinja import JinjaChatFormat

    llama = (
        "{% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n'"
        " + (m.content | trim) + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    )
    chat = JinjaChatFormat(llama, eos_token="<|eot_id|>")
    agent, engine = make_agent(["fine<|eot_id|>", "padded  <|eot_id|>", "x<|eot_id|>"], chat=chat)
    run(agent, "one")
    run(agent, "two")  # the reply ends in spaces the template will trim away
    saved = list(engine.tokens)
    events = run(agent, "three")
    assert isinstance(events[-1], ErrorEvent) and "not prefix-stable" in events[-1].message
    assert engine.tokens == saved and agent.turn == 2


def test_busy_and_wrong_model(make_agent, store, scripted_engine) -> None:
    agent, engine = make_agent(["slow<|end|>"])
    assert engine.n_tokens == 0

    async def overlap() -> None:
        gen = agent.send("a")
        await gen.__anext__()
        with pytest.raises(AgentBusyError):
            await agent.send("b").__anext__()
        with pytest.raises(AgentBusyError):
            agent.fork(0)
        async for _ in gen:
            pass

    asyncio.run(overlap())
    other = scripted_engine([])
    other.fingerprint = "another-model"
    with pytest.raises(AgentError, match="another model"):
        make_agent(engine=other, session_id=agent.session_id)


CHATML = (
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_hermes_calls_through_a_chat_template(make_agent) -> None:
    """Qwen-style: the markers are several tokens long (held back while they stream), the result goes
    back through the template, and the whole state equals one render of the conversation."""
    from hybrid_agent.model.chat import ChatMessage
    from hybrid_agent.model.chat_jinja import JinjaChatFormat

    chat = JinjaChatFormat(CHATML, eos_token="<|im_end|>")
    hermes = '<tool_call>{"name": "read_file", "arguments": {"path": "a.txt"}}</tool_call>'
    agent, engine = make_agent(["Let me <b>check</b>." + hermes, "It says hello.<|im_end|>"], chat=chat)
    events = run(agent, "read a.txt")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me <b>check</b>.It says hello."
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert not res.is_error and "hello from a" in res.text
    messages = [
        ChatMessage("system", agent.system_prompt),
        ChatMessage("user", "read a.txt"),
        ChatMessage("assistant", "", raw="Let me <b>check</b>." + hermes),
        ChatMessage("tool", res.text, name="read_file"),
        ChatMessage("assistant", "", raw="It says hello."),
    ]
    full = chat.render(messages, add_generation_prompt=False, tools=agent._tools)
    assert full.startswith(engine.text) and full[len(engine.text) :] == "\n"  # the template's own newline


def test_visible_text_holds_back_partial_markers() -> None:
    from hybrid_agent.agent.stream import VisibleText
    from hybrid_agent.model.chat_jinja import JinjaChatFormat

    vis = VisibleText(JinjaChatFormat(CHATML, eos_token="<|im_end|>"))
    pieces = ["a <", "too", "l_c", "all>{}</tool_call>", " b <", "x", "<|im_", "end|>"]
    out = [vis.push(p) for p in pieces]
    assert out == ["a ", "", "", "", " b ", "<x", "", ""]
    assert vis.finish() == "" and vis.emitted == "a  b <x"
    # No tools offered: the call markup is text, held back only while it may be the stop string.
    vis = VisibleText(JinjaChatFormat(CHATML, eos_token="<|im_end|>"), calls=False)
    out = [vis.push(p) for p in pieces]
    assert out == ["a ", "<too", "l_c", "all>{}</tool_call>", " b ", "<x", "", ""]
    assert vis.finish() == "" and vis.emitted == "a <tool_call>{}</tool_call> b <x"


def test_a_cancelled_turn_keeps_its_file_changes_in_the_journal(make_agent, workspace: Path, store) -> None:
    replies = [call("write_file", path="a.txt", content="edited\n"), "this reply is cut short<|end|>"]
    agent, engine = make_agent(replies, mode="auto")
    engine.step_hook = lambda n: agent.cancel() if engine.text.endswith("this") else None
    events = run(agent, "edit a")
    assert events[-1].stop_reason == "cancelled" and agent.turn == 0 and engine.n_tokens == 0
    assert (workspace / "a.txt").read_text() == "edited\n"  # the tool did run
    changes = store.file_changes(agent.session_id)
    assert [(c.turn, c.path, c.before, c.after) for c in changes] == [
        (1, "a.txt", b"hello from a\n", b"edited\n")
    ]
    agent.rewind(0, revert_files=True)
    assert (workspace / "a.txt").read_text() == "hello from a\n"


def test_interrupted_while_saving_follows_the_database(make_agent, store) -> None:
    """The consumer is cancelled while the turn's snapshot is being written: the write finishes (it is
    one transaction on the model thread) and the agent ends up exactly at that saved turn."""
    import threading
    import time

    agent, engine = make_agent(["Saved anyway.<|end|>", "Next.<|end|>"])
    in_save = threading.Event()
    snapshot = engine.snapshot

    def slow_snapshot(since: int) -> Any:
        if "Saved anyway" in engine.text:  # the turn's snapshot, not the system prompt's (prefix_cache.py)
            in_save.set()
            time.sleep(0.3)
        return snapshot(since)

    engine.snapshot = slow_snapshot

    async def interrupt() -> None:
        async def consume() -> None:
            async for _ in agent.send("one"):
                pass

        task = asyncio.create_task(consume())
        while not in_save.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupt())
    assert store.get_session(agent.session_id).latest_turn == 1
    assert agent.turn == 1 and not agent.running
    assert engine.n_tokens == store.load_snapshot(agent.session_id).n_tokens
    events = run(agent, "two")
    assert events[-1].saved and events[-1].turn == 2
    assert engine.text.endswith(
        "<|assistant|>Saved anyway.<|end|><|user|>two<|end|><|assistant|>Next.<|end|>"
    )


def test_cancel_during_a_long_prefill(make_agent) -> None:
    from hybrid_agent.agent.engine import PREFILL_CHUNK

    agent, engine = make_agent(["never decoded<|end|>"])
    long_text = "x" * (3 * PREFILL_CHUNK)
    prefill = engine.prefill

    def cancel_after_first_chunk(ids: Any) -> None:
        prefill(ids)
        agent.cancel()

    engine.prefill = cancel_after_first_chunk
    events = run(agent, long_text)
    assert events[-1].stop_reason == "cancelled" and not events[-1].saved
    assert len(engine.prefill_log) == 1  # one chunk read, the rest skipped
    assert engine.n_tokens == 0 and agent.turn == 0 and not any(isinstance(e, TextDelta) for e in events)


def test_a_turn_another_process_saved_first_is_kept_on_a_fork(make_agent, store) -> None:
    # One session open in two windows: both run turn 2. The second to save must not lose its turn
    # (nor overwrite the first's): it goes on a fork at turn 1, and that window continues there.
    first, _ = make_agent(["One.<|end|>", "First window.<|end|>"])
    run(first, "hi")
    sid = first.session_id
    second, engine = make_agent(["Second window.<|end|>", "Again.<|end|>"], session_id=sid)
    run(first, "from the first")
    end = run(second, "from the second")[-1]
    assert isinstance(end, TurnEnd) and end.saved and end.forked_from == sid
    fork = second.session_id
    assert fork != sid and (end.session_id, end.turn, second.turn) == (fork, 2, 2)
    assert f"saved turn 2 of session {sid} first" in end.fork_notice()
    assert f"saved on session {fork} instead (a fork sharing turn 1)" in end.fork_notice()
    users = {s: [e.content for e in store.events(s) if e.kind == "user"] for s in (sid, fork)}
    assert users == {sid: ["hi", "from the first"], fork: ["hi", "from the second"]}
    info = store.get_session(fork)
    assert (info.parent_id, info.fork_turn, info.latest_turn, info.n_tokens) == (sid, 1, 2, engine.n_tokens)
    # The fork holds exactly the second window's state, and its next turn goes on there as usual.
    _, reader = make_agent(session_id=fork)
    assert reader.tokens == engine.tokens and reader.text.endswith(
        "from the second<|end|><|assistant|>Second window.<|end|>"
    )
    end = run(second, "and on")[-1]
    assert (end.session_id, end.turn, end.forked_from) == (fork, 3, None)
    assert store.get_session(sid).latest_turn == 2  # the first window's session is untouched


def test_a_first_turn_another_process_saved_first_starts_a_new_session(make_agent, store, workspace) -> None:
    # A session with a row but no turn yet (a first turn killed after its tool wrote a file leaves one;
    # a new session's row is only written with its first change), open in two windows.
    sid = store.create_session("", str(workspace), "scripted-engine-v1").id
    first, _ = make_agent(["A.<|end|>"], session_id=sid)
    second, engine = make_agent(["B.<|end|>"], session_id=sid)
    run(first, "one")
    end = run(second, "two")[-1]
    assert end.saved and end.forked_from == sid and "(a new session)" in end.fork_notice()
    info = store.get_session(second.session_id)
    assert (info.parent_id, info.latest_turn, info.title) == (None, 1, "two")
    assert [e.kind for e in store.events(info.id)] == ["system", "user", "assistant"]
    assert store.load_snapshot(info.id).n_tokens == engine.n_tokens
    assert [e.content for e in store.events(sid) if e.kind == "user"] == ["one"]


def test_resume_moves_the_tools_to_the_sessions_folder(make_agent, store, tmp_path: Path) -> None:
    # The TUI's /resume (or the session browser) can open a session of another project: the model's
    # state is about that project's files, so the tools must act there, not in the folder the app
    # was started in.
    first, _ = make_agent(["One.<|end|>"])
    run(first, "hi")
    project = first.workspace
    other = tmp_path / "other-project"
    other.mkdir()
    replies = [call("write_file", path="new.txt", content="x\n"), "Done.<|end|>"]
    agent, _ = make_agent(replies, workspace=other)
    agent.mode = "auto"
    agent.resume(first.session_id)
    assert agent.workspace == project and agent.registry.workspace.root == project
    run(agent, "write new.txt")
    assert (project / "new.txt").read_text() == "x\n" and not (other / "new.txt").exists()
    # A fork continues where the session is now; a session whose folder is gone is refused, unchanged.
    fork = agent.fork(1)
    assert agent.workspace == project and store.get_session(fork).workspace == str(project)
    gone = tmp_path / "gone"
    gone.mkdir()
    lost, _ = make_agent(["Lost.<|end|>"], workspace=gone)
    run(lost, "here")
    gone.rmdir()
    with pytest.raises(AgentError, match=r"works on .*gone, which is not a folder any more.*--workspace DIR"):
        agent.resume(lost.session_id)
    assert (agent.session_id, agent.workspace) == (fork, project)
