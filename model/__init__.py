"""model/: the hybrid language model with an explicit, serialisable state. See docs/design.md.

Public names: `HybridConfig`, `HybridLM`, `ModelState`, `Page` (a cache page), `Tokenizer`,
`ByteTokenizer`, `load_tokenizer`, `generate`, `prefill`, `SamplingParams`, `load_model`, and the error
types of model/errors.py.
"""

from hybrid_agent.model.checkpoints import load_model
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.decode.generate import Generation, Step, generate, prefill
from hybrid_agent.model.decode.sampling import SamplingParams, sample
from hybrid_agent.model.errors import (
    CheckpointError,
    ConfigError,
    ModelError,
    StateMismatchError,
    TokenizerError,
    TokenRangeError,
)
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import ModelState, Page
from hybrid_agent.model.tokenizer import NATIVE_SPECIAL_TOKENS, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "NATIVE_SPECIAL_TOKENS",
    "ByteTokenizer",
    "CheckpointError",
    "ConfigError",
    "Generation",
    "HybridConfig",
    "HybridLM",
    "ModelError",
    "ModelState",
    "Page",
    "SamplingParams",
    "StateMismatchError",
    "Step",
    "TokenRangeError",
    "Tokenizer",
    "TokenizerError",
    "generate",
    "load_model",
    "load_tokenizer",
    "prefill",
    "sample",
]
