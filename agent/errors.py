"""Errors a user of `agent/` can cause, each with a message that says what to do."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised on purpose by `agent/` (the CLI prints it without a traceback)."""


class AgentBusyError(AgentError):
    """A turn is running; the operation must wait for it (or cancel it)."""


class ModelNotFoundError(AgentError):
    """No model at the given path, and no packaged default model."""


class StateLayoutError(AgentError):
    """A snapshot's stored state layout (how its tensors are laid out) is not the loaded model's."""
