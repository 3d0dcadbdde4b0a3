"""One owner of the model (agent/owner.py): whoever calls the agent (the sync wrapper the CLI uses, the
async API, the session operations, the constructor), every engine call runs on the agent's one
model thread, never on the caller's."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from hybrid_agent.agent.events import TurnEnd
from hybrid_agent.agent.loop import Agent
from hybrid_agent.agent.owner import ModelOwner


def threads_of(seen: list[tuple[str, threading.Thread]]) -> set[str]:
    return {thread.name for _, thread in seen}


def test_every_engine_call_runs_on_the_one_model_thread(make_agent, scripted_engine) -> None:
    engine = scripted_engine(["one<|end|>", "two<|end|>", "word " * 50, "three<|end|>", "four<|end|>"])
    seen = engine.record_threads()
    agent, _ = make_agent(engine=engine)  # a new session: the engine is reset
    assert agent.send_sync("first")[-1].saved
    first = agent.session_id
    assert agent.send_sync("second")[-1].saved

    async def python_api() -> list[Any]:
        engine.step_hook = lambda n: agent.cancel()  # the third turn is cancelled: a roll-back
        cancelled = [e async for e in agent.send("third")]
        engine.step_hook = None
        return cancelled + [e async for e in agent.send("fourth")]

    ends = [e for e in asyncio.run(python_api()) if isinstance(e, TurnEnd)]
    assert [(e.saved, e.stop_reason) for e in ends] == [(False, "cancelled"), (True, "end_of_turn")]
    agent.fork(1)
    agent.rewind(1, revert_files=True)
    agent.resume(first)
    agent.new_session()

    called = {name for name, _ in seen}
    assert {"reset", "encode", "prefill", "next_token", "snapshot", "mark_saved", "restore"} <= called
    owner = agent.model_owner.thread
    assert owner is not None and owner is not threading.current_thread()
    assert threads_of(seen) == {owner.name}, seen


def test_an_agent_built_on_an_owner_keeps_it(store, workspace, scripted_engine) -> None:
    engine = scripted_engine(["hi<|end|>"])
    seen = engine.record_threads()
    owner = ModelOwner()
    try:
        agent = owner.call(lambda: Agent(engine, store, workspace=workspace))
        assert agent.model_owner is owner
        assert agent.send_sync("hello")[-1].saved
        agent.fork(1)
        assert owner.thread is not None and threads_of(seen) == {owner.thread.name}
        owner.call(agent.close)  # closing on the owner: the owner's thread is its maker's to stop
        assert owner.submit(lambda: 42).result() == 42
    finally:
        owner.shutdown()
