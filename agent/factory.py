"""`Agent.open`: from paths and options to a ready agent (model, tokenizer, chat format, store, tools).

The default model is the one packaged in `model/default/` (config.json, model.safetensors,
tokenizer.json). There is no silent fallback to random weights: without it, the user is told to pass
`--model PATH`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hybrid_agent.agent.errors import AgentError, ModelNotFoundError

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
) -> ModelEngine:
    """The model's engine; `tp` > 1 splits the model over that many processes (agent/tp_launch.py)."""
    import torch
    from hybrid_agent.agent.engine import ModelEngine
    from hybrid_agent.model import load_model

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
) -> AgentT:
    from hybrid_agent.agent.session_ids import resolve_session_id
    from hybrid_agent.agent.sessions import describe_policy, folder_gone, session_policy
    from hybrid_agent.memory import Store

    check_options(
        temperature=temperature, max_new_tokens=max_new_tokens, max_tool_rounds=max_tool_rounds,
        window=window, sinks=sinks, max_prompt_tokens=max_prompt_tokens, mention_max_bytes=mention_max_bytes,
        project_memory_max_bytes=project_memory_max_bytes, tp=tp,
    )  # fmt: skip
    store = Store(db)
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
            model, device=device, window=window, sinks=sinks, seed=seed, temperature=temperature, tp=tp
        )
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
        if registry is not None:
            registry.close()  # the MCP servers it started
        store.close()
        raise
