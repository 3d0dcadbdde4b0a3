"""`Agent.open`: from paths and options to a ready agent (model, tokenizer, chat format, store, tools).

The default model is the one packaged in `model/default/` (config.json, model.safetensors,
tokenizer.json). There is no silent fallback to random weights: without it, the user is told to pass
`--model PATH`.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hybrid_agent.agent.errors import AgentError, ModelNotFoundError
from hybrid_agent.agent.startup import mark

if TYPE_CHECKING:
    from hybrid_agent.agent.engine import ModelEngine

# The agent class `open_agent` builds: `Agent.open` passes itself, so this module never imports
# agent/loop.py (which imports this one), and the two do not form an import circle.
AgentT = TypeVar("AgentT")


DEFAULT_MODEL_ENV = "HYBRID_AGENT_DEFAULT_MODEL"


def default_model_dir() -> Path:
    """The model used without `--model`: `$HYBRID_AGENT_DEFAULT_MODEL` if set (packagers and tests can
    move it), else the one shipped in `model/default/`."""
    if os.environ.get(DEFAULT_MODEL_ENV):
        return Path(os.environ[DEFAULT_MODEL_ENV]).expanduser()
    from hybrid_agent import model

    return Path(model.__file__).resolve().parent / "default"


def resolve_model_dir(path: str | Path | None) -> str:
    """What to hand to `load_model`: the packaged default, a local folder, or a Hub id (`org/name`).
    A local path that is not a model folder fails here, with one clear line, before anything loads."""
    if path is None:
        root = default_model_dir()
        if not (root / "config.json").is_file():
            raise ModelNotFoundError(
                f"no model given and no default model is installed ({root} has no config.json); "
                "pass --model PATH (a directory with config.json and model.safetensors)"
            )
        return str(root)
    text = str(path)
    local = Path(text).expanduser()
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not local.exists()
    if looks_like_hub_id:
        return text
    if not local.is_dir() or not (local / "config.json").is_file():
        raise ModelNotFoundError(
            f"no model at {local}: --model takes a directory with config.json and model weights "
            "(or a Hugging Face Hub id like org/name)"
        )
    return str(local)


def check_device(device: str | None) -> None:
    """Refuse, before any weights load, a device this machine or this torch cannot use."""
    import torch

    try:
        torch.empty(0, device=torch.device(device or "cpu"))
    except (RuntimeError, AssertionError) as exc:  # AssertionError: a torch built without CUDA
        raise AgentError(
            f"--device {device}: cannot use it here ({str(exc).splitlines()[0]}); "
            "use --device cpu, or cuda / cuda:N on a machine with an NVIDIA GPU"
        ) from None


def check_options(**numbers: float | None) -> None:
    """The numeric options of `open_agent`, checked as the CLI checks them (agent/cli.py): finite,
    and within bounds (temperature >= 0, counts >= 0, sizes >= 1); None means the default."""
    for name, value in numbers.items():
        if value is None:
            continue
        zero_ok = ("temperature", "sinks", "max_tool_rounds", "mention_max_bytes", "project_memory_max_bytes")
        low = 0 if name in zero_ok else 1
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AgentError(f"{name} must be a number, not {value!r}")
        if not math.isfinite(value) or value < low:
            raise AgentError(f"{name} must be a finite number >= {low}, not {value!r}")


def load_engine(
    path: str | Path | None,
    *,
    device: str | None = None,
    window: int | None = None,
    sinks: int = 4,
    seed: int | None = None,
    temperature: float = 0.0,
    tp: int = 1,
    preload: ModelPreload | None = None,
) -> ModelEngine:
    """The model's engine; `tp` > 1 splits the model over that many processes (agent/tp_launch.py).
    `preload`: the model already being read on a thread (`ModelPreload`), taken if it is this one
    (same model and device); otherwise it is discarded and the model read here."""
    import torch
    from hybrid_agent.agent.engine import ModelEngine
    from hybrid_agent.model import load_model

    if preload is not None and (tp > 1 or not preload.matches(path, device)):
        preload.discard()
        preload = None
    if preload is not None:
        where = preload.where
        lm, tokenizer, chat = preload.take()
    else:
        check_device(device)
        where = resolve_model_dir(path)
        if seed is not None:
            torch.manual_seed(seed)
        if tp > 1:
            from hybrid_agent.agent.tp_launch import start_ranks

            options = {"window": window, "sinks": sinks, "temperature": temperature, "seed": seed}
            engine: ModelEngine = start_ranks(where, tp, device, options)
            return engine
        lm, tokenizer, chat = load_model(where, device=device, progress=False)
    name = Path(where).name if Path(where).is_dir() else where
    return ModelEngine(
        lm, tokenizer, chat, window=window, sinks=sinks, temperature=temperature, seed=seed, model_name=name
    )


class ModelPreload:
    """`load_model(model, device=device)` on a thread of its own, started at once; `take` returns its
    result (or raises its error) to the one caller that asks for the same model and device.

    Before the first token, `run` imports the agent's modules, reads the settings, opens the database,
    builds the tool registry and the session, and reads the weights. Only the weights are large (about
    14 GB at OLMo Hybrid 7B's shape) and reading them is file reads and device copies, which release
    the GIL; the rest is Python (imports, SQL) that holds it. So `run` starts the read as soon as the
    model and device are known (agent/commands.py: after the settings, or before them when `--model`
    and `--device` are both given) and `load_engine` takes the model from it: the two overlap
    (docs/results.md, "Cold start"). `serve`, `acp` and the UI start it the same way, before their
    server's modules, port and database or the UI's: `preloading` is that one sequence for all four.
    The modules the read needs are imported before the thread starts, on the caller's thread: two
    threads importing modules that import each other could each get the other's half-built module.
    A start that fails before the model is taken (a bad `--resume`, a settings error, a port in use)
    calls `discard`: the read stops between two tensors and the thread is waited for, so the error
    comes soon and no thread is left writing to the device at exit."""

    def __init__(self, model: str | Path | None, device: str | None, seed: int | None = None) -> None:
        self.where = resolve_model_dir(model)  # a path that is not a model fails here, before the thread
        self.device = device
        self._seed = seed
        # What the thread runs, imported here (see the class docstring): torch and the loader.
        import hybrid_agent.model.checkpoints.loader  # noqa: F401

        self._stop = threading.Event()
        self._result: tuple[Any, Any, Any] | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._load, name="hybrid-agent-preload", daemon=False)
        mark("preload-start")
        self._thread.start()

    def _load(self) -> None:
        import torch
        from hybrid_agent.model.checkpoints.loader import load_model

        try:
            check_device(self.device)
            mark("device-ready")
            if self._seed is not None:  # as `load_engine` seeds it before its own load
                torch.manual_seed(self._seed)
            self._result = load_model(self.where, device=self.device, progress=False, stop=self._stop)
            mark("weights-read")
        except BaseException as exc:  # handed to `take`, on the caller's thread
            self._error = exc

    def matches(self, model: str | Path | None, device: str | None) -> bool:
        """Whether this preload is the load `load_engine(model, device=device)` would do."""
        return not self._taken and self.device == device and resolve_model_dir(model) == self.where

    def take(self) -> tuple[Any, Any, Any]:
        """Wait for the read; (model, tokenizer, chat format), or the error the read raised."""
        self._taken = True
        self._thread.join()
        mark("model-taken")
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        assert self._result is not None
        result, self._result = self._result, None
        return result

    def discard(self) -> None:
        """Stop the read between two tensors and wait for the thread (a start that failed)."""
        self._taken = True
        self._stop.set()
        self._thread.join()
        self._result = self._error = None


@contextlib.contextmanager
def preloading(
    start: Callable[[], ModelPreload | None],
    *,
    settle: Callable[[], object] | None = None,
    known: bool = True,
    to_the_end: bool = False,
) -> Iterator[ModelPreload | None]:
    """The start-up around a `ModelPreload`, one sequence for `run`, the UI, `serve` and `acp`.

    The read (`start()`; None for none: `--tp`, a test's engines) begins as soon as the model and
    device are known: at once when `known` (both flags given: a flag wins over the settings) or when
    there are no settings to read, else once `settle()` has read them. The rest of the caller's start-up
    runs in the `with` block, meanwhile. If `settle` or the block raises, the read is stopped (`discard`:
    the error comes at once and no thread is left writing to the device) and the error goes on. After
    the block the preload is the caller's, for `load_engine` to take or discard; with `to_the_end` it
    is discarded however the block ends (the block was its whole use; nothing to stop once taken)."""
    preload = start() if known or settle is None else None
    ok = False
    try:
        if settle is not None:
            settle()
            if preload is None:
                preload = start()
        yield preload
        ok = True
    finally:
        if preload is not None and (to_the_end or not ok):
            preload.discard()


def open_agent(
    cls: Callable[..., AgentT],
    *,
    model: str | Path | None = None,
    db: str | None = None,
    workspace: str | Path = ".",
    device: str | None = None,
    window: int | None = None,
    sinks: int = 4,
    seed: int | None = None,
    resume: str | None = None,
    approval: Any = None,
    permissions: Any = None,
    hooks: Any = None,
    enable_commands: bool = False,
    sandbox: Any = None,
    mcp_servers: dict[str, Any] | None = None,
    mode: str = "ask",
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    max_tool_rounds: int = 8,
    max_prompt_tokens: int | None = None,
    mention_max_bytes: int | None = None,
    project_memory_max_bytes: int | None = None,
    tp: int = 1,
    preload: ModelPreload | None = None,
) -> AgentT:
    """`preload`: the model being read on a thread since the options were known (`ModelPreload`);
    taken by `load_engine`, or discarded if the agent fails to open before that."""
    from hybrid_agent.agent.session_ids import resolve_session_id
    from hybrid_agent.agent.sessions import describe_policy, folder_gone, session_policy
    from hybrid_agent.memory import Store

    try:
        check_options(
            temperature=temperature, max_new_tokens=max_new_tokens, max_tool_rounds=max_tool_rounds,
            window=window, sinks=sinks, max_prompt_tokens=max_prompt_tokens,
            mention_max_bytes=mention_max_bytes, project_memory_max_bytes=project_memory_max_bytes, tp=tp,
        )  # fmt: skip
        store = Store(db)
    except BaseException:
        if preload is not None:
            preload.discard()
        raise
    mark("store-open")
    registry: Any = None
    try:
        recorded, given_window, moved_to = None, window, None
        if resume is not None:
            resume = resolve_session_id(store, resume)  # an id or a unique prefix, as on the CLI
            info = store.get_session(resume)
            if workspace != "." and Path(workspace).resolve() != Path(info.workspace).resolve():
                moved_to = str(Path(workspace).resolve())  # recorded once the session opened
            if workspace == ".":
                # A resumed session works on the files it was started on, unless told otherwise.
                workspace = info.workspace
                if not Path(workspace).is_dir():  # before the tools are set up on it
                    raise folder_gone(resume, workspace)
            recorded = session_policy(info)
            if window is None and recorded is not None and recorded[0] is not None:
                # ... and keeps the attention window it ran with (its numbers depend on it).
                window, sinks = recorded
        engine = load_engine(
            model, device=device, window=window, sinks=sinks, seed=seed, temperature=temperature, tp=tp,
            preload=preload,
        )  # fmt: skip
        preload = None  # taken (or discarded) by load_engine
        mark("engine-ready")
        if recorded is not None and given_window is not None and engine.window != recorded[0]:
            # The resume would run under the session's own window anyway (Agent.resume): say so
            # rather than drop the option without a word.
            raise AgentError(
                f"session {resume} runs with {describe_policy(recorded)}; --window {given_window} "
                "would change its numbers: resume it without --window (or start a new session with it)"
            )
        if sandbox is not None or mcp_servers:  # run_command's sandbox from the settings (tools/sandbox.py)
            from hybrid_agent.tools import ToolRegistry

            registry = ToolRegistry(workspace, enable_commands=enable_commands, sandbox=sandbox)
        if mcp_servers:  # a server that fails is one line of registry.plugin_errors, not a stop
            from hybrid_agent.agent.mcp_servers import mount_servers

            mount_servers(registry, mcp_servers)
        agent = cls(
            engine,
            store,
            registry,
            workspace=workspace,
            session_id=resume,
            mode=mode,  # type: ignore[arg-type]
            # An "allow always" answer also becomes a rule of the local settings file.
            approval=permissions.remembering(approval) if permissions and approval else approval,
            permissions=permissions,
            hooks=hooks,
            enable_commands=enable_commands,
            max_new_tokens=max_new_tokens,
            max_tool_rounds=max_tool_rounds,
            max_prompt_tokens=max_prompt_tokens,
            mention_max_bytes=mention_max_bytes,
            project_memory_max_bytes=project_memory_max_bytes,
        )
        if moved_to is not None:  # set only on a resume
            # Resumed on another folder (the project moved, or a copy): that is the session's folder
            # from now on, so the next resume finds it without --workspace.
            store.move_session(resume, moved_to)
        return agent
    except BaseException:
        if preload is not None:
            preload.discard()
        if registry is not None:
            registry.close()  # the MCP servers it started
        store.close()
        raise
