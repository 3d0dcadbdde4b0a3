"""model/: the hybrid language model with an explicit, serialisable state. See ../shared/DESIGN.md.

Public names: `HybridConfig`, `HybridLM`, `ModelState`, `Tokenizer`, `ByteTokenizer`, `load_tokenizer`,
`generate`, `prefill`, `SamplingParams`, `load_model`, and the error types of model/errors.py.
"""

from model.checkpoints import load_model
from model.config import HybridConfig
from model.errors import (
    CheckpointError,
    ConfigError,
    ModelError,
    StateMismatchError,
    TokenizerError,
    TokenRangeError,
)
from model.generate import Generation, Step, generate, prefill
from model.hybrid import HybridLM
from model.sampling import SamplingParams, sample
from model.state import ModelState
from model.tokenizer import NATIVE_SPECIAL_TOKENS, ByteTokenizer, Tokenizer, load_tokenizer

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
