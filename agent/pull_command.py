"""`hybrid-agent pull REPO_ID [--revision R]`: a checkpoint into the Hugging Face cache, checked first.

The steps, each failing with one line that says what to do:
1. the revision is resolved to a commit and the repo's files are listed (sizes, LFS sha256, git ids);
2. config.json alone is fetched and its `model_type` checked against the families we load
   (model/checkpoints/loader.py's `family_of`), so an unsupported model costs no weight download;
3. the bytes not yet in the cache are compared with the free space of the cache's disk;
4. `snapshot_download` fetches the files `--model` reads (loader.py's `HUB_PATTERNS`) with its progress
   bar on stderr; files already in the cache are skipped, and a transfer cut off mid-file is continued
   by the library with a Range request;
5. every fetched file is hashed and compared with the listing (sha256 for LFS files, the git blob id
   for the others); a file that does not match is deleted from the cache and the command fails.
The snapshot's path is printed on stdout. `--model REPO_ID` then finds it in the cache, also offline
(HF_HUB_OFFLINE=1). The Hub endpoint, cache folder and token are huggingface_hub's own settings
(HF_ENDPOINT, HF_HUB_CACHE, HF_TOKEN or `hf auth login`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable

HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class RepoEntry:
    """One file of the repo listing: its size and the hash the Hub gives for it."""

    path: str
    size: int
    sha256: str | None  # LFS files
    git_id: str  # the git blob id (sha1 of "blob SIZE\\0" + content) of a non-LFS file

    @property
    def blob_name(self) -> str:
        """The name huggingface_hub stores the file under in the cache's blobs/ (its ETag)."""
        return self.sha256 or self.git_id


def add_parser(sub: Any) -> None:
    """The `pull` command, on the subparsers `sub` of agent/cli.py's parser. The session options
    (--model, --db, ...) mean nothing here, so it takes only its own."""
    pull = sub.add_parser(
        "pull", help="download a Hub checkpoint into the Hugging Face cache (checked, resumable)"
    )
    pull.add_argument("repo_id", metavar="REPO_ID", help="the model on the Hub, as org/name")
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    pull.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def cmd_pull(args: argparse.Namespace) -> int:
    path = pull(args.repo_id, revision=args.revision)
    print(printable(str(path)))
    return 0


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Download `repo_id` at `revision` into the cache (module docstring); returns the snapshot folder.
    `cache_dir`, `endpoint` and `token` default to huggingface_hub's settings."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise AgentError(f"{repo_id!r} is not a Hub model id; write it as org/name") from None
    if repo_id.count("/") != 1:
        raise AgentError(f"{repo_id!r} is not a Hub model id; write it as org/name")
    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    where = endpoint or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, revision, where, cache, token):
        try:
            commit = api.repo_info(repo_id, revision=revision).sha
            files = _listing(api, repo_id, commit)
        except Exception as e:
            if _is_offline(e):
                return _cached(repo_id, revision, cache)
            raise
        assert commit is not None
        _check_family(repo_id, commit, files, cache, endpoint, token)
        wanted = [f for f in files.values() if _wanted(f.path)]
        _check_space(repo_id, wanted, cache)
        from huggingface_hub import snapshot_download
        from hybrid_agent.model.checkpoints.loader import HUB_PATTERNS

        # The revision as given (not the commit), so that the cache records which commit it names
        # (refs/REVISION) and `--model REPO_ID` finds it offline.
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                endpoint=endpoint,
                token=token,
                allow_patterns=HUB_PATTERNS,
            )
        )
    if folder.name != commit:
        raise AgentError(
            f"{repo_id} changed on the Hub during the download ({revision or 'main'} is now "
            f"{folder.name[:12]}, not {commit[:12]}); run `hybrid-agent pull {repo_id}` again"
        )
    _verify(repo_id, folder, wanted)
    return folder


def _listing(api: Any, repo_id: str, commit: str | None) -> dict[str, RepoEntry]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for f in api.list_repo_tree(repo_id, revision=commit, recursive=True):
        if isinstance(f, RepoFile):
            lfs = f.lfs
            size = int(lfs.size if lfs is not None else f.size)
            out[f.path] = RepoEntry(f.path, size, lfs.sha256 if lfs is not None else None, f.blob_id)
    return out


def _wanted(path: str) -> bool:
    from hybrid_agent.model.checkpoints.loader import HUB_PATTERNS

    return any(fnmatch(path, p) for p in HUB_PATTERNS)


def _check_family(
    repo_id: str,
    commit: str,
    files: dict[str, RepoEntry],
    cache: Path,
    endpoint: str | None,
    token: str | bool | None,
) -> None:
    """config.json's family is one we load, and the repo has safetensors weights."""
    from huggingface_hub import hf_hub_download
    from hybrid_agent.model.checkpoints.loader import family_of
    from hybrid_agent.model.errors import CheckpointError

    if "config.json" not in files:
        raise AgentError(f"{repo_id} has no config.json at its top level; it is not a model checkpoint")
    path = hf_hub_download(
        repo_id, "config.json", revision=commit, cache_dir=cache, endpoint=endpoint, token=token
    )
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise AgentError(f"{repo_id}'s config.json is not a JSON object ({e})") from None
    try:
        family_of(config)
    except CheckpointError as e:
        raise AgentError(f"{repo_id}: {e}") from None
    if not any(p.endswith(".safetensors") for p in files):
        raise AgentError(
            f"{repo_id} has no *.safetensors weights (hybrid-agent reads safetensors only, never "
            "pickled .bin files)"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _check_space(repo_id: str, wanted: list[RepoEntry], cache: Path) -> None:
    """The bytes not yet in the cache fit on its disk (checked before any weight is fetched)."""
    from huggingface_hub.file_download import repo_folder_name

    blobs = cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    need = sum(
        f.size for f in {f.blob_name: f for f in wanted}.values() if not (blobs / f.blob_name).is_file()
    )
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise AgentError(
            f"{repo_id} needs {_size(need)} in {cache} but its disk has {_size(free)} free; free some space "
            "or point HF_HUB_CACHE at a larger disk"
        )


def _file_hash(path: Path, entry: RepoEntry) -> str:
    h = hashlib.sha256() if entry.sha256 else hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(repo_id: str, folder: Path, wanted: list[RepoEntry]) -> None:
    """Every file matches the listing's hash; one that does not is removed from the cache (its blob and
    the snapshot's link to it), so that the next pull fetches it again."""
    from tqdm.auto import tqdm

    total = sum(f.size for f in wanted)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verifying", leave=False, file=sys.stderr,
               disable=total < (64 << 20))  # fmt: skip
    bad = []
    try:
        for entry in wanted:
            path = folder / entry.path
            if not path.is_file():
                raise AgentError(
                    f"{repo_id}: {entry.path} is missing from {folder} after the download; run pull again"
                )
            expected = entry.sha256 or entry.git_id
            if _file_hash(path, entry) != expected:
                bad.append(entry.path)
                blob = Path(os.path.realpath(path))
                path.unlink(missing_ok=True)
                if blob != path:
                    blob.unlink(missing_ok=True)
            bar.update(entry.size)
    finally:
        bar.close()
    if bad:
        raise AgentError(
            f"{repo_id}: {', '.join(bad)} did not match the Hub's hash (corrupted in transfer or on "
            "disk) and was deleted from the cache; run `hybrid-agent pull` again"
        )


def _is_offline(e: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(e, OfflineModeIsEnabled)


def _cached(repo_id: str, revision: str | None, cache: Path) -> Path:
    """Offline: the snapshot already in the cache, if it is complete."""
    from huggingface_hub import snapshot_download
    from hybrid_agent.model.checkpoints.loader import HUB_PATTERNS

    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=HUB_PATTERNS
        )
    except Exception:
        raise AgentError(
            f"the Hub is offline (HF_HUB_OFFLINE is set) and {repo_id} is not in the cache {cache}; "
            "unset HF_HUB_OFFLINE to download it"
        ) from None
    print(f"note: offline (HF_HUB_OFFLINE is set): {repo_id} is the cached copy, not checked against "
          "the Hub", file=sys.stderr)  # fmt: skip
    return Path(path)


class _hub_errors:
    """huggingface_hub's exceptions as one line each, saying what to do."""

    def __init__(
        self, repo_id: str, revision: str | None, endpoint: str, cache: Path, token: str | bool | None
    ) -> None:
        self.repo_id, self.revision, self.endpoint, self.cache = repo_id, revision, endpoint, cache
        self.token = token

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, AgentError | KeyboardInterrupt) or not isinstance(exc, Exception):
            return False
        raise AgentError(self.message(exc)) from None

    def message(self, exc: Exception) -> str:
        from huggingface_hub import get_token
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo, page = self.repo_id, f"{self.endpoint.rstrip('/')}/{self.repo_id}"
        if isinstance(exc, GatedRepoError):
            sent = self.token if isinstance(self.token, str) else self.token is not False and get_token()
            if not sent:
                return (
                    f"{repo} is a gated model: accept its terms at {page}, then log in "
                    "(`hf auth login`, or set HF_TOKEN to a read token) and pull again"
                )
            return f"{repo} is a gated model and your token has no access yet: accept its terms at {page}"
        if isinstance(exc, RevisionNotFoundError):
            return f"{repo} has no revision {self.revision!r}; name a branch, tag or commit it has"
        if isinstance(exc, RepositoryNotFoundError):
            return (
                f"no model {repo} on {self.endpoint} (check the spelling; a private repo needs "
                "`hf auth login` or HF_TOKEN)"
            )
        if _is_offline(exc) or isinstance(exc, LocalEntryNotFoundError):
            return (
                f"cannot reach the Hub ({_first_line(exc)}) and {repo} is not complete in the cache "
                f"{self.cache}; check the network (or HF_ENDPOINT) and pull again"
            )
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            return f"the Hub answered {status} for {repo}: {_first_line(exc)}; pull again later"
        if isinstance(exc, OSError) and not type(exc).__module__.startswith(("huggingface_hub", "httpx")):
            return f"cannot write to the cache {self.cache}: {exc}"
        return (
            f"downloading {repo} from {self.endpoint} failed ({type(exc).__name__}: {_first_line(exc)}); "
            "check the network (or HF_ENDPOINT) and pull again: finished files are kept"
        )


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
