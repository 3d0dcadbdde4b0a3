"""Time from the spawn of `hybrid-agent acp` to an editor's first streamed token: the process answers
`initialize`, the editor opens a session (`session/new`) after `--think` seconds (0: at once, as a
script would; an editor opens its panel at once and the person types for a while) and sends a
prompt; the clock stops at the first `agent_message_chunk`.

Each start is a fresh process driven over stdio by the official `acp` SDK's client side, with
HYBRID_AGENT_STARTUP_TRACE on (agent/startup.py): each start's trace phases are kept. Trees, rounds,
checkpoint shapes, `--budget`, the fingerprint bookkeeping and the JSON after every start are those
of bench/cold_start.py, whose helpers this script uses.

    python bench/acp_start.py --tree before=/tmp/site-before --tree after=/tmp/site-after \
        --shape olmo-1b --think 0 --rounds 5 --out acp_start_cpu.json

On the 2-core CPU machine (before: a3de715, which read the weights at the first session/new; after:
the read from the start): acp_start_olmo1b_think0_cpu_s8.json (session at once: no gain, and
`initialize` later while the read takes a core) and acp_start_olmo1b_think5_cpu_s8.json (session
after 5 s: the read is done by then).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cold_start  # bench/ is not a package: its scripts import each other by path


class Editor:
    """The client side: notes when the first answer chunk arrives; refuses every tool call."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.first_chunk_s: float | None = None

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        if update.session_update == "agent_message_chunk" and self.first_chunk_s is None:
            self.first_chunk_s = time.perf_counter() - self.t0

    async def request_permission(self, options: list[Any], session_id: str, tool_call: Any, **_: Any) -> Any:
        from acp.schema import DeniedOutcome, RequestPermissionResponse

        return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))


async def timed_start(tree: dict[str, Any], args: list[str], think: float) -> dict[str, Any]:
    from acp import spawn_agent_process, text_block
    from acp.schema import ClientCapabilities

    cmd = ["-m", "hybrid_agent", "acp", "--db", tree["db"], *args]
    log = Path(tree["workspace"]) / "acp.log"
    cached = cold_start.fingerprint_file(tree)
    out: dict[str, Any] = {}
    spawned = time.time()
    t0 = time.perf_counter()
    editor = Editor(t0)
    with log.open("wb") as err:
        async with spawn_agent_process(
            lambda _: editor, sys.executable, *cmd, cwd=tree["workspace"], env=tree["env"],
            transport_kwargs={"stderr": err},
        ) as (conn, _):  # fmt: skip
            await conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities())
            out["initialize_s"] = time.perf_counter() - t0
            await asyncio.sleep(max(0.0, think - out["initialize_s"]))
            sid = (await conn.new_session(cwd=tree["workspace"], mcp_servers=[])).session_id
            out["session_s"] = time.perf_counter() - t0
            await conn.prompt(session_id=sid, prompt=[text_block("hello")])
            out["result_s"] = time.perf_counter() - t0
    out["first_token_s"] = editor.first_chunk_s
    out["phases"] = cold_start.trace_phases(log.read_text(), spawned)
    if out["first_token_s"] is None:
        raise SystemExit(f"{tree['name']}: no answer streamed: {log.read_text()[-500:]}")
    out |= cold_start.cache_outcome(tree, cached)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return cold_start.summarize_starts(rows, ("initialize_s", "session_s", "first_token_s"), "first_token_s")


def main() -> None:
    began = time.perf_counter()
    p = cold_start.start_parser(__doc__)
    p.add_argument(
        "--think", type=float, default=0.0, help="seconds from the spawn to session/new (default 0)"
    )
    p.add_argument("--max-new-tokens", type=int, default=4)
    a = cold_start.parse_start_args(p)
    if not a.think >= 0:
        p.error("give --think seconds >= 0 (the delay before session/new)")
    scratch = Path(tempfile.mkdtemp(prefix="acp-start-"))
    try:
        model = cold_start.model_for(a, scratch)
        args = [
            "--device",
            a.device,
            "--max-new-tokens",
            str(a.max_new_tokens),
            *(["--model", model] if model else []),
        ]
        cold_start.run_starts(
            a, began, scratch, cold_start.run_header(a, think_s=a.think), "acp", summarize,
            lambda tree: asyncio.run(timed_start(tree, args, a.think)),
            lambda row: f"first token {row['first_token_s']:.2f} s",
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
