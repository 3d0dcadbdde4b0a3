"""What the generator's tests read out of an episode (scripts/make_agent_data.py `Episode`)."""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.tools import ToolRegistry


def calls_and_results(ep: Any) -> tuple[list[tuple[str, dict]], list[str]]:
    """The tool calls the episode trains the model to write (each well-formed) and the tool results
    it shows, in order."""
    written = "".join(t for t, _, trained in ep.pieces if trained)
    parsed = NativeChatFormat().parse_tool_calls(written)
    assert all(c.error is None and c.name is not None for c in parsed)
    results = [ep.pieces[k + 1][0] for k, (t, m, _) in enumerate(ep.pieces) if m and t == "<|tool_result|>"]
    return [(str(c.name), c.arguments) for c in parsed], results


def replay(ws: Any, task: Any) -> list[str]:
    """A generated task's tool calls run against its workspace (scripts/agent_shapes.py `Workspace`,
    `Task`): each result holds what the task expects of it; the results in order."""
    with ToolRegistry(workspace=ws.root, load_plugins=False) as registry:
        results = [registry.call(name, dict(args)).text for name, args in task.calls]
    for expect, result in zip(task.expect, results, strict=False):
        assert expect in result, (task.prompt, expect, result)
    return results
