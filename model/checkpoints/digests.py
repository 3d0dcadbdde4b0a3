"""The sha256 of every weight, computed on worker threads while the next weights are read.

hashlib releases the GIL on large buffers, so hashing overlaps with reading and uses several cores;
without it, hashing dominates a load on CPUs without SHA instructions (measured here: sha256 127 MB/s
on one core vs 466 MB/s for a plain read). A buffer stays referenced until it is hashed; the bytes
waiting to be hashed are bounded, so temporary buffers (dtype conversions) cannot pile up.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor


def _sha256(header: bytes, data: memoryview) -> str:
    h = hashlib.sha256(header)
    h.update(data)
    return h.hexdigest()


class TensorDigests:
    """Call it with (name, header, bytes) to queue one weight; `digests()` waits, returns name -> hex."""

    def __init__(self, workers: int | None = None, max_pending_bytes: int = 512 << 20) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
        self._futures: dict[str, Future[str]] = {}
        self._pending: deque[tuple[Future[str], int]] = deque()
        self._pending_bytes = 0
        self._max_pending = max_pending_bytes

    def __call__(self, name: str, header: bytes, data: memoryview, /) -> None:
        future = self._pool.submit(_sha256, header, data)
        self._futures[name] = future
        self._pending.append((future, data.nbytes))
        self._pending_bytes += data.nbytes
        while self._pending_bytes > self._max_pending and len(self._pending) > 1:
            oldest, size = self._pending.popleft()
            oldest.result()
            self._pending_bytes -= size

    def digests(self) -> dict[str, str]:
        try:
            return {name: f.result() for name, f in self._futures.items()}
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
