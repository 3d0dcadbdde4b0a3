"""The model fingerprint of a checkpoint, remembered across starts so it is hashed once, not per start.

Design choices:
- Hashing every weight (model/checkpoints/digests.py) costs more than reading them: about 10 s of a
  13 GB checkpoint's start on a GPU machine (docs/results.md). The fingerprint only changes when the
  files, the dtype or the code that converts them change, so it is kept in a small JSON file under
  the user cache dir (`$HYBRID_AGENT_CACHE_DIR`, else platformdirs' user_cache_dir).
- The key is a sha256 over each input file's (absolute path, size, mtime_ns, inode) — the checkpoint's
  config, index and shards, and the loader's and adapter's own source files — and the dtype the
  weights are converted to. Any change to one of them (a re-download, `touch`, an edit) gives another
  key, so the weights are hashed again; nothing else is compared.
- The file is plain JSON, read with a size cap; a file that does not parse, or an entry that is not a
  64-digit hex digest, is ignored (a full hash follows) and overwritten on the next store. It is only
  ever trusted for the digest itself. Writes go to a temporary file renamed over the old one, so a
  crash or two concurrent starts never leave half a file; the last writer wins, losing at most an entry.
- A file changed within the filesystem's timestamp granularity of its last write keeps its mtime
  (and, rewritten in place at the same size, its whole key): as git does for its index, a fingerprint
  is only stored once every input file is older than `SETTLE_NS`, so a checkpoint written moments ago
  is hashed again at its next start rather than trusted.
- A cache folder that cannot be written is no error: the fingerprint is then computed every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

CACHE_DIR_ENV = "HYBRID_AGENT_CACHE_DIR"
CACHE_FILE = "fingerprints.json"
FORMAT = 1
MAX_ENTRIES = 256  # the oldest entries go first; a user rarely has more checkpoints than this
MAX_FILE_BYTES = 1 << 20  # a larger file is not ours (256 entries take ~40 kB): ignored
SETTLE_NS = 2_000_000_000  # files modified less than this long ago are not cached yet
_HEX64 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """`$HYBRID_AGENT_CACHE_DIR`, else platformdirs' user cache dir (it honours XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hybrid-agent", appauthor=False))


def file_stats(paths: Iterable[Path]) -> list[list[str | int]]:
    """(absolute path, size, mtime_ns, inode) of each file, in the order given."""
    out: list[list[str | int]] = []
    for p in paths:
        path = Path(p).resolve()
        st = path.stat()
        out.append([str(path), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def cache_key(stats: list[list[str | int]], **extra: str) -> str:
    """The key of a fingerprint: the files' stats (`file_stats`) and whatever else it depends on."""
    text = json.dumps({"format": FORMAT, "files": stats, **extra}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def settled(stats: list[list[str | int]]) -> bool:
    """Whether every file of `stats` was last modified over `SETTLE_NS` ago (module docstring)."""
    now = time.time_ns()
    return all(int(s[2]) < now - SETTLE_NS for s in stats)


class FingerprintCache:
    """`get(key)` -> the stored fingerprint or None; `put(key, fingerprint)` stores it."""

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (folder if folder is not None else cache_dir()) / CACHE_FILE

    def _entries(self) -> dict[str, str]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError:
            return {}
        if len(raw) > MAX_FILE_BYTES:
            return {}
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("fingerprints")
        if not isinstance(entries, dict):
            return {}
        return {
            k: v
            for k, v in entries.items()
            if isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(k) and _HEX64.fullmatch(v)
        }

    def get(self, key: str) -> str | None:
        return self._entries().get(key)

    def put(self, key: str, fingerprint: str) -> None:
        if not _HEX64.fullmatch(fingerprint):
            raise ValueError(f"not a sha256 hex digest: {fingerprint!r}")
        entries = self._entries()
        entries.pop(key, None)
        entries[key] = fingerprint  # newest last: dicts keep insertion order, and so does the JSON
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        text = json.dumps({"format": FORMAT, "fingerprints": entries}, indent=0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fingerprints-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only or full cache folder: the next start hashes again, nothing is lost
