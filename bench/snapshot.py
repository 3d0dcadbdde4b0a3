"""Snapshot store benchmark: save/load latency and MB/s for an OLMo-Hybrid-7B-sized state, against a
plain file in the same run, and bytes written per turn early vs late in one long session.

State (per the issue): 24 Gated DeltaNet layers, each a (1, 30, 96, 192) fp32 recurrent state plus
bf16 short-conv states for q, k (30*96 channels) and v (30*192 channels) with kernel 4 (3 kept);
8 attention layers with 30 KV heads x 128 dims in bf16; each turn adds a cache page of
`--page-tokens` tokens (default 4,096) per attention layer.

Baseline: the same tensors through `safetensors.torch.save` -> write -> fsync to a plain file, and
back with read -> `safetensors.torch.load`. The store additionally hashes every chunk (BLAKE3, on
write and on every read) and commits durably (SQLite WAL, synchronous=FULL).

Growth: one session of `--growth-turns` turns with smaller pages (`--growth-page-tokens`, to keep the
run short; the recurrent state is full size). Per sampled turn: the store's logical bytes
(SaveStats.bytes_written) and the bytes the process actually wrote (/proc/self/io wchar: WAL + the
checkpoint into the main file).

    .venv/bin/python bench/snapshot.py            # writes bench/results/snapshot.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alembic
import safetensors
import safetensors.torch
import sqlalchemy
import torch
from hybrid_agent.memory import Store, blob_read, blobs, turns
from hybrid_agent.memory.blobs import prepare_blob
from hybrid_agent.memory.codec import tensors_from_buffer, tensors_to_bytes
from hybrid_agent.memory.sqlite_chunks import chunk_readers
from hybrid_agent.model import Page

GDN_LAYERS, ATTN_LAYERS = 24, 8
HEADS, DK, DV, CONV_KEEP = 30, 96, 192, 3
KV_HEADS, HEAD_DIM = 30, 128
MB = 1e6


def recurrent_state(turn: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(turn)
    out: dict[str, torch.Tensor] = {}
    for i in range(GDN_LAYERS):
        out[f"layers.{i}.recurrent"] = torch.randn(1, HEADS, DK, DV, generator=g)
        for name, dim in (("q", HEADS * DK), ("k", HEADS * DK), ("v", HEADS * DV)):
            out[f"layers.{i}.conv_{name}"] = torch.randn(1, dim, CONV_KEEP, generator=g).to(torch.bfloat16)
    return out


def cache_page(start: int, tokens: int) -> Page:
    g = torch.Generator().manual_seed(10_000 + start)
    tensors = {}
    for i in range(ATTN_LAYERS):
        for kv in ("k", "v"):
            tensors[f"layers.{GDN_LAYERS + i}.{kv}"] = torch.randn(
                1, KV_HEADS, tokens, HEAD_DIM, generator=g, dtype=torch.bfloat16
            )
    return Page(start, start + tokens, tensors)


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def wchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def plain_file_roundtrip(
    path: Path, tensors: list[dict[str, torch.Tensor]], *, hashed: bool
) -> tuple[float, float]:
    """Seconds to write (serialise + write + fsync) and to read back (read + deserialise) plain files.
    `hashed`: also digest the bytes on both sides with the store's chunked hashing, i.e. everything the
    store does except the database, to separate the cost of verification from the cost of SQLite."""
    t0 = time.perf_counter()
    for i, t in enumerate(tensors):
        data = safetensors.torch.save(t)
        if hashed:
            prepare_blob(data)
        with open(path.with_suffix(f".{i}"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)  # the new directory entries, as a durable write needs
    os.fsync(fd)
    os.close(fd)
    t1 = time.perf_counter()
    for i in range(len(tensors)):
        data = path.with_suffix(f".{i}").read_bytes()
        if hashed:
            prepare_blob(data)
        safetensors.torch.load(data)
    t2 = time.perf_counter()
    for i in range(len(tensors)):
        path.with_suffix(f".{i}").unlink()
    return t1 - t0, t2 - t1


def sha256_mbps() -> float:
    """This CPU's single-thread sha256 speed: the store hashes every byte on save and on load."""
    data = os.urandom(64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / MB / (time.perf_counter() - t0)


# ---- the load path, stage by stage -------------------------------------------------------------------
def sqlite_file_of(store: Store) -> Path | None:
    from hybrid_agent.memory.database import sqlite_file

    return sqlite_file(store.url)


def legacy_load(store: Store, sid: str, *, window: int | None, sinks: int) -> dict[str, object]:
    """The load path before the pipeline (the previous `read_snapshot`, kept here as the baseline):
    fetch every chunk as bytes in one query, sha256 them, join them, `safetensors.torch.load` (copies)."""
    with store._read() as s, s.begin():
        shas = snapshot_blobs_in(s, sid, window=window, sinks=sinks)
        return {sha: safetensors.torch.load(blob_read.read_blob(s, sha, what="bench")) for sha in shas}


def snapshot_blobs_in(s: Any, sid: str, *, window: int | None, sinks: int) -> list[str]:
    return turns.snapshot_blobs(s, sid, None, window=window, sinks=sinks)


def drop_from_page_cache(db: Path) -> None:
    """Evict the database file (and its WAL) from the OS page cache: the next read comes from the disk,
    as on a resume after a reboot. Clean pages only, so checkpoint first."""
    for f in (db, db.with_name(db.name + "-wal")):
        if f.exists():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def load_stages(
    store: Store, sid: str, *, window: int | None, sinks: int, device: str = "cpu", sync: object = None
) -> dict[str, float]:
    """Each stage of the load path alone over the same blobs, in GB/s (warm page cache):
    sqlite_read (incremental-blob reads, nothing else), sha256_one_core, sha256_pool and blake3_pool
    (the store's thread pool), place (copy into the buffer; on CUDA through the pinned ring to the GPU),
    pipeline (read_blob_tensor: all of the above overlapped, the workers reading too through
    `chunk_readers`, as load_snapshot does), pipeline_one_reader (only the calling thread reads),
    decode (header parse + views)."""
    wait = sync if callable(sync) else (lambda: None)
    with store._read() as s, s.begin():
        shas = snapshot_blobs_in(s, sid, window=window, sinks=sinks)
        index = {sha: blob_read._chunk_index(s, sha, "bench") for sha in shas}
        t = time.perf_counter()
        chunks = {sha: list(blob_read._chunk_data(s, sha, index[sha][2], "bench")) for sha in shas}
        t_read = time.perf_counter() - t
        total = sum(len(c) for cs in chunks.values() for c in cs)
        flat = [c for cs in chunks.values() for c in cs]
        sample = flat[: max(1, (256 << 20) // blobs.CHUNK_SIZE)]
        t = time.perf_counter()
        for c in sample:
            hashlib.sha256(c).digest()
        sha_one = sum(len(c) for c in sample) / (time.perf_counter() - t)
        t = time.perf_counter()
        blobs._digests(flat, total)
        t_sha = time.perf_counter() - t
        t = time.perf_counter()
        blobs._digests(flat, total, "blake3")
        t_b3 = time.perf_counter() - t
        bufs = {sha: torch.empty(index[sha][0], dtype=torch.uint8, device=device) for sha in shas}
        wait()
        t = time.perf_counter()
        for sha in shas:
            chunk_size = index[sha][1]
            buf = bufs[sha]
            place = blob_read._cuda_placer(buf, chunk_size) if buf.is_cuda else blob_read._cpu_placer(buf)
            pending: deque[Future[None]] = deque()
            for i, c in enumerate(chunks[sha]):
                while len(pending) >= blob_read._in_flight():  # the pinned ring's slots: as read_blob_tensor
                    pending.popleft().result()
                pending.append(blobs._pool().submit(place, i, i * chunk_size, c))
            for f in pending:
                f.result()
        wait()
        t_place = time.perf_counter() - t
        del chunks, flat, sample
        t = time.perf_counter()
        out = [blob_read.read_blob_tensor(s, sha, what="bench", device=device) for sha in shas]
        wait()
        t_pipe1 = time.perf_counter() - t
        del out
        t = time.perf_counter()
        with chunk_readers(s) as readers:
            out = [
                blob_read.read_blob_tensor(s, sha, what="bench", device=device, readers=readers)
                for sha in shas
            ]
        wait()
        t_pipe = time.perf_counter() - t
        t = time.perf_counter()
        for b in out:
            tensors_from_buffer(b, what="bench")
        wait()
        t_dec = time.perf_counter() - t
    gb = total / 1e9
    return {
        "bytes": total,
        "workers": blobs._WORKERS,
        "sqlite_read_GBps": gb / t_read,
        "sha256_one_core_GBps": sha_one / 1e9,
        "sha256_pool_GBps": gb / t_sha,
        "blake3_pool_GBps": gb / t_b3,
        "algorithms": sorted({index[sha][3] for sha in shas}),  # what the pipeline stages verified with
        "place_GBps": gb / t_place,
        "pipeline_one_reader_GBps": gb / t_pipe1,
        "pipeline_GBps": gb / t_pipe,
        "decode_s": t_dec,
    }


def bench_latency(workdir: Path, page_tokens: int, repeats: int, url: str | None = None) -> dict[str, float]:
    store = Store(url or workdir / "latency.db")
    sid = store.create_session("bench", "/w", "fp").id
    kinds = (
        "save",
        "ser",
        "serlib",
        "sha",
        "ckpt",
        "load",
        "legacy",
        "cold",
        "fwrite",
        "fread",
        "hwrite",
        "hread",
    )
    times: dict[str, list[float]] = {k: [] for k in kinds}
    size = 0
    for turn in range(1, repeats + 1):
        rec, page = recurrent_state(turn), cache_page((turn - 1) * page_tokens, page_tokens)
        size = nbytes(rec) + nbytes(page.tensors)
        # The two CPU stages of save_turn, timed alone on the same tensors.
        t0 = time.perf_counter()
        raw = [tensors_to_bytes(rec), tensors_to_bytes(page.tensors)]
        t1 = time.perf_counter()
        for b in raw:
            prepare_blob(b)
        times["ser"].append(t1 - t0)
        times["sha"].append(time.perf_counter() - t1)
        del raw
        t0 = time.perf_counter()  # the safetensors library's writer on the same tensors (the before)
        raw = [safetensors.torch.save(rec), safetensors.torch.save(page.tensors)]
        times["serlib"].append(time.perf_counter() - t0)
        del raw
        t0 = time.perf_counter()
        store.save_turn(sid, turn, events=[], recurrent=rec, pages=[page], n_tokens=turn * page_tokens)
        times["save"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.checkpoint()  # normally on the background thread; here so that it does not disturb the load
        times["ckpt"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        snap = store.load_snapshot(sid, window=page_tokens)  # this turn's state + its page = same bytes
        times["load"].append(time.perf_counter() - t0)
        assert len(snap.pages) == 1
        assert torch.equal(snap.pages[0][2]["layers.24.k"], page.tensors["layers.24.k"])
        del snap
        # The previous load path on the same bytes, in the same run (the before of the pipeline).
        t0 = time.perf_counter()
        old = legacy_load(store, sid, window=page_tokens, sinks=0)
        times["legacy"].append(time.perf_counter() - t0)
        got = [t["layers.24.k"] for t in old.values() if "layers.24.k" in t]
        assert len(got) == 1 and torch.equal(got[0], page.tensors["layers.24.k"])
        del old
        path = sqlite_file_of(store)
        if path is not None:  # the pipeline again, its bytes coming from the disk
            drop_from_page_cache(path)
            t0 = time.perf_counter()
            store.load_snapshot(sid, window=page_tokens)
            times["cold"].append(time.perf_counter() - t0)
        for prefix, hashed in (("f", False), ("h", True)):
            w, r = plain_file_roundtrip(workdir / f"plain{turn}", [rec, page.tensors], hashed=hashed)
            times[prefix + "write"].append(w)
            times[prefix + "read"].append(r)
    stages = load_stages(store, sid, window=page_tokens, sinks=0)
    store.close()
    m = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    return {
        "save_serialize_safetensors_lib_s": m["serlib"],
        "load_legacy_s": m["legacy"],
        "load_cold_s": m["cold"],
        "load_speedup_vs_legacy": m["legacy"] / m["load"],
        "load_GBps": size / m["load"] / 1e9,
        "load_legacy_GBps": size / m["legacy"] / 1e9,
        "load_stages": stages,
        "turn_bytes": size,
        "repeats": repeats,
        "save_s": m["save"],
        "save_serialize_s": m["ser"],
        "save_digest_s": m["sha"],
        "checkpoint_s": m["ckpt"],
        "load_s": m["load"],
        "file_write_s": m["fwrite"],
        "file_read_s": m["fread"],
        "hashed_file_write_s": m["hwrite"],
        "hashed_file_read_s": m["hread"],
        "save_ratio": m["save"] / m["fwrite"],
        "load_ratio": m["load"] / m["fread"],
        "save_ratio_vs_hashed_file": m["save"] / m["hwrite"],
        "load_ratio_vs_hashed_file": m["load"] / m["hread"],
    }


def bench_growth(workdir: Path, page_tokens: int, turns: int, samples: set[int]) -> list[dict[str, float]]:
    store = Store(workdir / "growth.db")
    sid = store.create_session("growth", "/w", "fp").id
    rows = []
    rec = recurrent_state(0)
    for turn in range(1, turns + 1):
        # A new recurrent state each turn (as a real turn has): perturb one element so the blob differs.
        rec["layers.0.recurrent"].view(-1)[0] = float(turn)
        page = cache_page((turn - 1) * page_tokens, page_tokens)
        before, t0 = wchar(), time.perf_counter()
        stats = store.save_turn(
            sid, turn, events=[], recurrent=rec, pages=[page], n_tokens=turn * page_tokens
        )
        elapsed = time.perf_counter() - t0
        store.checkpoint()  # the copy from the log into the main file is this turn's too
        written = wchar() - before
        if turn in samples:
            size = (workdir / "growth.db").stat().st_size
            row = {"turn": turn, "logical_bytes": stats.bytes_written, "wchar_bytes": written}
            rows.append(row | {"save_s": elapsed, "db_file_bytes": size})
    store.close()
    return rows


@contextlib.contextmanager
def pg_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server for the run, dropped afterwards."""
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"hybrid_agent_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def pg_server_version(server_url: str) -> str:
    engine = sqlalchemy.create_engine(server_url)
    with engine.connect() as conn:
        version = str(conn.exec_driver_sql("SHOW server_version").scalar())
    engine.dispose()
    return version


def report(
    lat: dict[str, float], growth: list[dict[str, float]], args: argparse.Namespace, sha: float
) -> None:
    rec_mb, page_mb = nbytes(recurrent_state(0)) / MB, nbytes(cache_page(0, args.page_tokens).tensors) / MB
    size = lat["turn_bytes"] / MB
    print(
        f"one turn: recurrent {rec_mb:.1f} MB + {args.page_tokens}-token cache page {page_mb:.1f} MB", end=""
    )
    print(f" = {size:.1f} MB")
    print(f"this CPU: sha256 {sha:.0f} MB/s on one core (the store hashes every byte on save and on load)\n")
    rows = [
        ("save (durable commit)", lat["save_s"], lat["file_write_s"], lat["hashed_file_write_s"]),
        ("  serialise (ours)", lat["save_serialize_s"], None, None),
        ("  (safetensors library)", lat["save_serialize_safetensors_lib_s"], None, None),
        ("  digests of the chunks", lat["save_digest_s"], None, None),
        ("  database (rest)", lat["save_s"] - lat["save_serialize_s"] - lat["save_digest_s"], None, None),
        ("WAL checkpoint (background)", lat["checkpoint_s"], None, None),
        ("load (read + verify)", lat["load_s"], lat["file_read_s"], lat["hashed_file_read_s"]),
        ("  previous load path", lat["load_legacy_s"], lat["file_read_s"], lat["hashed_file_read_s"]),
        ("  load, cold page cache", lat["load_cold_s"], None, None),
    ]
    print(f"{'':30}{'store':>13}{'plain file':>20}{'file + digest':>22}")
    units = f"{'s':>7}{'MB/s':>6}{'ratio':>7}"
    print(f"{'':30}{'s':>6}{'MB/s':>7}{units}{units}  (ratio = store / file)")
    for name, store_s, file_s, hashed_s in rows:
        line = f"{name:30}{store_s:6.2f}"
        if file_s is not None and hashed_s is not None:
            line += f"{size / store_s:7.0f}"
            for base in (file_s, hashed_s):
                line += f"{base:7.2f}{size / base:6.0f}{store_s / base:7.2f}"
        print(line)
    st = lat["load_stages"]
    print(f"\nload: {lat['load_speedup_vs_legacy']:.2f}x the previous path ({lat['load_GBps']:.2f} vs "
          f"{lat['load_legacy_GBps']:.2f} GB/s); stages alone, GB/s ({st['workers']} workers): "
          + ", ".join(f"{k[:-5]} {v:.2f}" for k, v in st.items() if k.endswith("_GBps")))  # fmt: skip
    if not growth:
        return
    print(f"\nbytes written per turn, one session of {args.growth_turns} turns,", end="")
    print(f" {args.growth_page_tokens}-token pages:")
    print(f"{'turn':>6}{'logical MB':>12}{'written MB':>12}{'save s':>9}{'db file MB':>12}")
    for r in growth:
        print(
            f"{r['turn']:6}{r['logical_bytes'] / MB:12.2f}{r['wchar_bytes'] / MB:12.2f}{r['save_s']:9.2f}"
            f"{r['db_file_bytes'] / MB:12.0f}"
        )
    first, last = growth[0], growth[-1]
    logical, written = (last[k] / first[k] for k in ("logical_bytes", "wchar_bytes"))
    print(f"turn {last['turn']} / turn {first['turn']}: logical {logical:.3f}, written {written:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--page-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--growth-turns", type=int, default=200)
    ap.add_argument("--growth-page-tokens", type=int, default=64)
    ap.add_argument("--pg-url", default=None, help="also time save/load on this PostgreSQL server (fresh db)")
    ap.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "snapshot.json")
    args = ap.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    workdir = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir=args.dir))
    n = args.growth_turns
    try:
        sha = sha256_mbps()
        lat = bench_latency(workdir, args.page_tokens, args.repeats)
        pg = None
        if args.pg_url:
            with pg_database(args.pg_url) as url:
                pg = bench_latency(workdir, args.page_tokens, args.repeats, url)
        samples = {1, 2, 3, n // 4, n // 2, n - 1, n}
        growth = bench_growth(workdir, args.growth_page_tokens, n, samples) if n else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(lat, growth, args, sha)
    if pg is not None:
        print(f"\nPostgreSQL {pg_server_version(args.pg_url)} (local server, same CPU):")
        print(f"{'':30}{'store s':>8}{'MB/s':>7}{'vs plain file':>15}")
        size = pg["turn_bytes"] / MB
        for name, k, f in (
            ("save (durable commit)", "save_s", "file_write_s"),
            ("load (read + verify)", "load_s", "file_read_s"),
        ):
            print(f"{name:30}{pg[k]:8.2f}{size / pg[k]:7.0f}{pg[k] / pg[f]:15.2f}")

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    result = {
        "benchmark": "snapshot",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"CPU: {cpu} ({os.cpu_count()} cores visible, shared)",
        "disk_dir": str(workdir.parent),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "alembic": alembic.__version__,
            "safetensors": safetensors.__version__,
            "sqlite": sqlite3.sqlite_version,
            "postgresql": pg_server_version(args.pg_url) if args.pg_url else None,
        },
        "config": vars(args) | {"dir": str(args.dir), "out": str(args.out), "pg_url": bool(args.pg_url)},
        "sha256_MBps_one_core": sha,
        "latency": lat,
        "latency_postgresql": pg,
        "growth": growth,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
