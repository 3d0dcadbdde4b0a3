"""What the generator's tests read out of an episode (scripts/make_agent_data.py `Episode`)."""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.chat import NativeChatFormat


def calls_and_results(ep: Any) -> tuple[list[tuple[str, dict]], list[str]]:
    """The tool calls the episode trains the model to write (each well-formed) and the tool results
    it shows, in order."""
    written = "".join(t for t, _, trained in ep.pieces if trained)
    parsed = NativeChatFormat().parse_tool_calls(written)
    assert all(c.error is None and c.name is not None for c in parsed)
    results = [ep.pieces[k + 1][0] for k, (t, m, _) in enumerate(ep.pieces) if m and t == "<|tool_result|>"]
    return [(str(c.name), c.arguments) for c in parsed], results
