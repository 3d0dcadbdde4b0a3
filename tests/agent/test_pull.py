"""`hybrid-agent pull` against a local HTTP server that answers the Hub's own routes, as huggingface_hub
calls them: `/api/models/{repo}/revision/{rev}` (the commit), `/api/models/{repo}/tree/{rev}` (the
listing, with each LFS file's sha256), HEAD and GET `/{repo}/resolve/{rev}/{file}` (X-Repo-Commit,
ETag, X-Linked-Etag, X-Linked-Size, Range requests), and the Hub's errors (X-Error-Code RepoNotFound,
RevisionNotFound, GatedRepo). The real huggingface_hub client downloads from it into a cache folder of
the test; `run --model REPO_ID` then loads the cached copy with HF_HUB_OFFLINE set and the server gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import constants
from hybrid_agent.agent import pull_command
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.pull_command import pull
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "org/tiny"


def _git_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, files: dict[str, bytes], gated: bool = False) -> None:
        self.files, self.gated = files, gated

    @staticmethod
    def lfs(path: str) -> bool:
        return path.endswith(".safetensors")

    def tree(self) -> list[dict[str, Any]]:
        out = []
        for path, data in self.files.items():
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": _git_id(data)}
            if self.lfs(path):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                entry["oid"] = _git_id(pointer.encode())  # the git blob is the LFS pointer file
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
            out.append(entry)
        return out


class Hub:
    """The Hub's routes over `repos`; `log` records (method, path, Range header) of every request.
    `cut_once[path] = n` sends only n bytes of the next GET of that file, then drops the connection;
    `serve[path] = data` answers with other bytes than the listing's (a corrupted transfer); a GET of a
    path in `refuse` is answered 403."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.log: list[tuple[str, str, str | None]] = []
        self.cut_once: dict[str, int] = {}
        self.serve: dict[str, bytes] = {}
        self.refuse: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, head=True)

            def do_GET(self) -> None:
                hub.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("X-Repo-Commit", COMMIT) if code == "EntryNotFound" else None
        body = json.dumps({"error": message}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def json(self, h: BaseHTTPRequestHandler, obj: Any) -> None:
        body = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.log.append((h.command, path, h.headers.get("Range")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or resolve
        if match is None:
            return self.error(h, 404, "NotFound", "no such route")
        repo = self.repos.get(match.group(1))
        if repo is None:
            return self.error(h, 404, "RepoNotFound", "Repository not found")
        revision = (match.group(3) or "main") if api else match.group(2)
        if revision not in ("main", COMMIT):
            return self.error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if api and api.group(2) != "tree":
            siblings = [{"rfilename": p} for p in repo.files]
            return self.json(h, {"id": match.group(1), "sha": COMMIT, "siblings": siblings, "private": False})
        if api:
            return self.json(h, repo.tree())
        assert resolve is not None
        name = resolve.group(3)
        if repo.gated:
            msg = f"Access to model {match.group(1)} is restricted. You must be authenticated to access it."
            return self.error(h, 401, "GatedRepo", msg)
        if name not in repo.files:
            return self.error(h, 404, "EntryNotFound", f"{name} does not exist on main")
        if not head and name in self.refuse:
            return self.error(h, 403, "Forbidden", "Request has expired")
        listed = repo.files[name]
        data = self.serve.get(name, listed)
        start = 0
        if not head and (want := h.headers.get("Range")):
            start = int(re.fullmatch(r"bytes=(\d+)-", want).group(1))  # type: ignore[union-attr]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{_git_id(listed)}"')
        h.send_header("Accept-Ranges", "bytes")
        if repo.lfs(name):
            h.send_header("X-Linked-Etag", f'"{hashlib.sha256(listed).hexdigest()}"')
            h.send_header("X-Linked-Size", str(len(listed)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if head:
            return None
        body = data[start:]
        if not head and name in self.cut_once:
            body = body[: self.cut_once.pop(name)]
            h.close_connection = True
        h.wfile.write(body)
        return None


def tiny_checkpoint(folder: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        folder
    )
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["README.md"] = b"# tiny\n"  # not one of the files --model reads: not fetched
    return files


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    files = tiny_checkpoint(tmp_path / "source")
    llama = dict(files, **{"config.json": json.dumps({"model_type": "llama"}).encode()})
    server = Hub({REPO: Repo(files), "org/llama": Repo(llama), "org/gated": Repo(files, gated=True)})
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def _pull(hub: Hub, cache: Path, repo: str = REPO, **kw: Any) -> Path:
    return pull(repo, cache_dir=cache, endpoint=hub.url, token=False, **kw)


def _gets(hub: Hub, name: str) -> list[str | None]:
    return [rng for method, path, rng in hub.log if method == "GET" and path.endswith("/" + name)]


def test_pull_fetches_what_model_reads_into_the_cache(hub: Hub, cache: Path) -> None:
    folder = _pull(hub, cache)
    assert folder == cache / "models--org--tiny" / "snapshots" / COMMIT
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).read_bytes() == hub.repos[REPO].files[name]
    assert not (folder / "README.md").exists()
    assert _gets(hub, "README.md") == []
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == COMMIT
    hub.log.clear()  # a second pull fetches nothing and checks everything again
    assert _pull(hub, cache) == folder
    assert [path for method, path, _ in hub.log if method == "GET" and "/resolve/" in path] == []


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder that `pull` filled, its Hub gone."""
    tmp = tmp_path_factory.mktemp("pulled")
    server = Hub({REPO: Repo(tiny_checkpoint(tmp / "source"))})
    try:
        _pull(server, tmp / "hf-cache")
    finally:
        server.close()
    return tmp / "hf-cache"


def test_run_loads_a_pulled_model_offline(
    pulled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(pulled))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ws").mkdir()
    argv = ["run", "hi", "--model", REPO, "--db", str(tmp_path / "s.db"), "--workspace", str(tmp_path / "ws")]
    code = main([*argv, "--max-new-tokens", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["type"] == "result" and events[-1]["subtype"] == "success"
    # offline, `pull` itself answers with the cached copy
    folder = pull(REPO, cache_dir=pulled, endpoint="http://127.0.0.1:9", token=False)
    assert folder == pulled / "models--org--tiny" / "snapshots" / COMMIT
    assert "offline" in capsys.readouterr().err


def test_offline_with_nothing_cached_says_so(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AgentError, match=r"offline .* not in the cache"):
        pull(REPO, cache_dir=cache, endpoint="http://127.0.0.1:9", token=False)


@pytest.mark.parametrize(
    ("repo", "revision", "message"),
    [
        ("org/missing", None, "no model org/missing on http://127.0.0.1:.*check the spelling"),
        (REPO, "v9", "org/tiny has no revision 'v9'"),
        ("org/gated", None, "org/gated is a gated model: accept its terms at http://127.0.0.1:.*/org/gated"),
        ("not a repo", None, "is not a Hub model id; write it as org/name"),
    ],
)
def test_hub_errors_are_one_line(
    hub: Hub, cache: Path, repo: str, revision: str | None, message: str
) -> None:
    with pytest.raises(AgentError, match=message) as info:
        _pull(hub, cache, repo, revision=revision)
    assert "\n" not in str(info.value)
    assert _gets(hub, "model.safetensors") == []


def test_a_gated_repo_with_a_token_says_the_token_has_no_access(hub: Hub, cache: Path) -> None:
    with pytest.raises(AgentError, match="org/gated is a gated model and your token has no access yet"):
        pull("org/gated", cache_dir=cache, endpoint=hub.url, token="hf_not_granted")


def test_unsupported_model_type_is_refused_before_the_weights(hub: Hub, cache: Path) -> None:
    with pytest.raises(AgentError) as info:
        _pull(hub, cache, "org/llama")
    text = str(info.value)
    assert "model_type 'llama' is not supported" in text
    from hybrid_agent.model.checkpoints.loader import ADAPTERS

    assert all(family in text for family in ADAPTERS)
    assert _gets(hub, "config.json") and _gets(hub, "model.safetensors") == []


def test_too_small_disk_is_refused_before_the_weights(
    hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pull_command.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(AgentError, match=r"org/tiny needs 183.1 kB in .* but its disk has 1.0 kB free"):
        _pull(hub, cache)
    assert _gets(hub, "model.safetensors") == []


def test_a_corrupted_download_is_refused_and_deleted(hub: Hub, cache: Path) -> None:
    good = hub.repos[REPO].files["model.safetensors"]
    hub.serve["model.safetensors"] = good[:-4] + bytes(4 - i for i in range(4))  # same size
    with pytest.raises(AgentError, match=r"model.safetensors did not match the Hub's hash .* deleted"):
        _pull(hub, cache)
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
    assert not (snapshot / "model.safetensors").exists()
    assert not (cache / "models--org--tiny" / "blobs" / hashlib.sha256(good).hexdigest()).exists()
    del hub.serve["model.safetensors"]  # the next pull fetches it again, and it is right
    assert (_pull(hub, cache) / "model.safetensors").read_bytes() == good


def test_an_interrupted_transfer_resumes_where_it_stopped(
    hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so resumes from) whole chunks: 10 MB ones by default, 16 kB here.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 14)
    hub.cut_once["model.safetensors"] = 100_000
    folder = _pull(hub, cache)
    assert _gets(hub, "model.safetensors") == [None, f"bytes={100_000 // (1 << 14) * (1 << 14)}-"]
    assert (folder / "model.safetensors").read_bytes() == hub.repos[REPO].files["model.safetensors"]


def test_a_failed_pull_keeps_finished_files_and_the_next_fetches_the_rest(hub: Hub, cache: Path) -> None:
    weights = hub.repos[REPO].files["model.safetensors"]
    hub.refuse.add("model.safetensors")  # its download is refused (as an expired CDN link is)
    with pytest.raises(AgentError, match="the Hub answered 403 for org/tiny"):
        _pull(hub, cache)
    hub.refuse.clear()
    hub.log.clear()
    folder = _pull(hub, cache)
    assert _gets(hub, "config.json") == [] and _gets(hub, "model.safetensors") == [None]
    assert (folder / "model.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_cli_pull_and_offline_run_in_subprocesses(hub: Hub, cache: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "hybrid_agent"]
    out = subprocess.run([*cmd, "pull", REPO], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(cache / "models--org--tiny" / "snapshots" / COMMIT)
    bad = subprocess.run([*cmd, "pull", "org/gated"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "gated" in bad.stderr
    hub.close()
    env |= {"HF_HUB_OFFLINE": "1"}
    (tmp_path / "ws").mkdir()
    run = [
        *cmd,
        "run",
        "hi",
        "--model",
        REPO,
        "--db",
        str(tmp_path / "s.db"),
        "--workspace",
        str(tmp_path / "ws"),
    ]
    out = subprocess.run(
        [*run, "--max-new-tokens", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("session: ")
    shutil.rmtree(cache)
    out = subprocess.run(
        [*run, "--max-new-tokens", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "offline" in out.stderr
