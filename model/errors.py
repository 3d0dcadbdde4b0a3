"""The errors a user of `model/` can cause, each with a message that says what to do.

All derive from `ModelError`, so the CLI and TUI can show them without a traceback. Those that are
plain bad arguments also derive from `ValueError`, so generic callers still catch them.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised on purpose by `model/`."""


class ConfigError(ModelError):
    """A `HybridConfig` that cannot describe a model (unknown layer type, sizes that do not divide).

    Deliberately not a `ValueError`: pydantic would wrap a `ValueError` raised while validating into its
    own `ValidationError`, hiding our type from callers.
    """


class TokenRangeError(ModelError, ValueError):
    """Token ids outside `[0, vocab_size)` or input of the wrong shape or dtype."""


class StateMismatchError(ModelError, ValueError):
    """A `ModelState` (or its tensors) that does not belong to this model's config, batch or device."""


class CheckpointError(ModelError):
    """A model directory that cannot be loaded (missing files, wrong tensors)."""


class TokenizerError(ModelError, ValueError):
    """A tokenizer file that cannot be used, or a special token it does not have."""


class SwitchError(ModelError, ValueError):
    """An on/off switch in the environment with a value it does not take (model/switches.py)."""
