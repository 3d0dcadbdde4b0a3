"""kernels.moe_gemv (decode) and kernels.moe_grouped_gemm (prefill) against their torch references and a
float64 computation of the definition (every token-slot through its expert, weighted, summed).

Without a GPU the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1) at
small shapes; on the device the same tests run on CUDA, and the `gpu` tests check bf16 at a real MoE shape
and that both ops run inside a captured CUDA graph (no host read).

The launch-config sweep of moe_gemv (bench/gpu_moe_tune.py, bench/gpu_moe.py's `tune` section) and the
table its picks go to (kernels/moe_tuned.py), at the end: every launch of the sweep's grid runs as the
gate|up kernel's blocks and as the down kernel's at small shapes whose sizes are multiples of no block
(tails in every kernel, more than one column block where a block is narrower than the axis), against
`moe_gemv_ref`. The sweep's configs pair an up launch with a down launch and each kernel's result
depends only on its own blocks, so this covers every config the sweep can time. A config is passed as
the grid has it; moe_gemv_triton clamps its blocks to the small axes, as it does at any shape.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.kernels.errors import KernelInputError
from hybrid_agent.kernels.moe import (
    MoeGemmConfig,
    MoeGemvConfig,
    SharedExpert,
    default_gemm_config,
    default_gemv_config,
    heuristic_gemv_config,
    moe_gemv,
    moe_gemv_ref,
    moe_grouped_gemm,
    moe_grouped_gemm_ref,
)
from hybrid_agent.kernels.moe_tuned import GEMV_TUNED, batch_bucket
from hybrid_agent.kernels.testing import rel_err

BENCH = Path(__file__).resolve().parents[2] / "bench"

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
# small blocks: several programs per axis and masked tails at these shapes, few enough for the interpreter
GEMV = MoeGemvConfig(block_i=8, block_d_in=32, block_d=8, block_i_in=32)
GEMM = MoeGemmConfig(block_m=16, block_n=16, block_k=16)


def inputs(n: int, k: int, e: int, d: int, i: int, gated: bool, dtype: torch.dtype, dev: str, seed: int,
           dup: bool = False):  # fmt: skip
    """x, ids (distinct per token, as top-k gives; `dup`: repeats within a token too), weights, gate, up,
    down. Few experts for many tokens, so tokens share experts."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if dup:
        ids = torch.randint(0, e, (n, k), generator=g)
    else:
        ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])
    w = torch.rand(n, k, generator=g) + 0.1
    gate = torch.randn(e, i, d, generator=g) / d**0.5 if gated else None
    up = torch.randn(e, i, d, generator=g) / d**0.5
    down = torch.randn(e, d, i, generator=g) / i**0.5
    cast = [x, gate, up, down]
    x, gate, up, down = (None if t is None else t.to(dev, dtype) for t in cast)
    return x, ids.to(dev), w.to(dev), gate, up, down


def exact(x, ids, w, gate, up, down) -> torch.Tensor:
    """The definition in float64, slot by slot."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    x64 = x.double().cpu()
    for n in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[n, j])
            u = up[e].double().cpu() @ x64[n]
            h = F.relu(u).square() if gate is None else F.silu(gate[e].double().cpu() @ x64[n]) * u
            out[n] += float(w[n, j]) * (down[e].double().cpu() @ h)
    return out


CASES = [  # n, k, e, d, i
    (1, 2, 6, 40, 24),  # D, I not multiples of the blocks: masked tails, clamped rows
    (3, 3, 5, 48, 24),
    (9, 2, 4, 32, 16),  # more slots than experts: each expert serves several tokens
]


@pytest.mark.parametrize("n, k, e, d, i", CASES)
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_ops_match_float64(dev, n, k, e, d, i, gated, dtype):
    args = inputs(n, k, e, d, i, gated, dtype, dev, seed=n * 100 + k * 10 + e)
    want = exact(*args)
    refs = moe_gemv_ref(*args), moe_grouped_gemm_ref(*args)
    outs = moe_gemv(*args, config=GEMV), moe_grouped_gemm(*args, config=GEMM)
    for got in (*refs, *outs):
        assert got.shape == (n, d) and got.dtype == dtype
        assert rel_err(got.cpu(), want) < TOL[dtype]
    for got in outs:  # the engine swaps the reference for the kernel
        assert rel_err(got.cpu(), refs[0].cpu()) < TOL[dtype]


def shared_inputs(n: int, d: int, hs: int, gated: bool, with_gate: bool, dtype, dev: str, seed: int):
    """A shared expert's pre-activations as columns of a wider stacked row (as the decode engine's one
    projection gives them: router logits first, the gate logit after), its down weight, its gate logit."""
    g = torch.Generator().manual_seed(seed)
    width = 2 * hs if gated else hs
    row = torch.randn(n, 5 + width + 1 + 3, generator=g).to(dev, dtype)  # 5 "router" columns, 3 spare
    down = (torch.randn(d, hs, generator=g) / hs**0.5).to(dev, dtype)
    return SharedExpert(row[:, 5 : 5 + width], down, row[:, 5 + width : 6 + width] if with_gate else None)


def exact_shared(shared: SharedExpert, gated: bool) -> torch.Tensor:
    """The shared expert's term in float64."""
    pre, hs = shared.pre.double().cpu(), shared.down.shape[1]
    h = F.silu(pre[:, :hs]) * pre[:, hs:] if gated else F.relu(pre).square()
    y = h @ shared.down.double().cpu().T
    return y if shared.gate is None else torch.sigmoid(shared.gate.double().cpu()) * y


@pytest.mark.parametrize("n, k, e, d, i", CASES[:2])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("with_gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_gemv_adds_the_shared_expert(dev, n, k, e, d, i, gated, with_gate, dtype):
    """`shared`: the layer's shared expert (hidden 20: masked tails; strided views) added in the down
    launch, against float64 and against the reference (the model's arithmetic)."""
    args = inputs(n, k, e, d, i, gated, dtype, dev, seed=n * 7 + e)
    shared = shared_inputs(n, d, 20, gated, with_gate, dtype, dev, seed=n + 3)
    assert shared.pre.stride(0) > shared.pre.shape[1]  # a view into wider rows
    want = exact(*args) + exact_shared(shared, gated)
    ref = moe_gemv_ref(*args, shared=shared)
    got = moe_gemv(*args, config=GEMV, shared=shared)
    assert got.shape == (n, d) and got.dtype == dtype
    assert rel_err(ref.cpu(), want) < TOL[dtype] and rel_err(got.cpu(), want) < TOL[dtype]
    assert rel_err(got.cpu(), ref.cpu()) < TOL[dtype]


def test_moe_gemv_shared_bad_inputs():
    x, ids, w, gate, up, down = inputs(2, 2, 4, 16, 8, True, torch.float32, "cpu", seed=1)
    shared = shared_inputs(2, 16, 6, True, True, torch.float32, "cpu", seed=2)
    with pytest.raises(KernelInputError, match=r"\[gate \| up\]"):
        moe_gemv(x, ids, w, gate, up, down, shared=shared._replace(pre=shared.pre[:, :6]))
    with pytest.raises(KernelInputError, match="down"):
        moe_gemv(x, ids, w, gate, up, down, shared=shared._replace(down=shared.down.T))
    with pytest.raises(KernelInputError, match="gate must be"):
        moe_gemv(x, ids, w, gate, up, down, shared=shared._replace(gate=shared.pre[:, :2]))


def test_repeated_ids_within_a_token(dev):
    """Ids repeated inside a token's k slots (not what top-k gives, but the contract allows it)."""
    args = inputs(5, 3, 3, 32, 16, True, torch.float32, dev, seed=4, dup=True)
    assert any(len(set(r.tolist())) < 3 for r in args[1])
    want = exact(*args)
    assert rel_err(moe_gemv(*args, config=GEMV).cpu(), want) < TOL[torch.float32]
    assert rel_err(moe_grouped_gemm(*args, config=GEMM).cpu(), want) < TOL[torch.float32]


def test_default_configs_and_int32_ids(dev):
    """The ops' own launch choices, with int32 ids and bf16 routing weights (what a caller may pass)."""
    x, ids, w, gate, up, down = inputs(2, 2, 4, 64, 32, True, torch.float32, dev, seed=8)
    want = exact(x, ids, w, gate, up, down)
    ids32, wb = ids.to(torch.int32), w.to(torch.bfloat16)
    want_b = exact(x, ids32, wb, gate, up, down)
    assert rel_err(moe_gemv(x, ids32, wb, gate, up, down).cpu(), want_b) < TOL[torch.float32]
    assert rel_err(moe_grouped_gemm(x, ids, w, gate, up, down).cpu(), want) < TOL[torch.float32]
    assert default_gemm_config(4096 * 8, 256).block_m == 64 and default_gemm_config(64, 128).block_m == 16
    cfg = default_gemv_config(1, 8, 2048, 512)
    assert cfg.block_i * cfg.block_d_in >= 1024 and 8 * 512 // cfg.block_i >= 4 * 132


def test_align_by_expert_groups_slots_in_padded_blocks():
    from hybrid_agent.kernels.triton_moe import align_by_expert

    ids = torch.tensor([[2, 0], [2, 1], [0, 2], [3, 2]])  # slots 0..7; expert 2 has four
    slots, block_expert = align_by_expert(ids, 5, 2)
    assert block_expert.shape[0] == (8 + 5 * 1) // 2
    assert slots.tolist()[:10] == [1, 4, 3, 8, 0, 2, 5, 7, 6, 8]  # 8 = padding
    assert block_expert.tolist() == [0, 1, 2, 2, 3, -1]


def test_moe_bad_inputs():
    x, ids, w, gate, up, down = inputs(2, 2, 4, 16, 8, True, torch.float32, "cpu", seed=1)
    with pytest.raises(KernelInputError, match="features"):
        moe_gemv(x[:, :8], ids, w, gate, up, down)
    with pytest.raises(KernelInputError, match="integers"):
        moe_grouped_gemm(x, ids.float(), w, gate, up, down)
    with pytest.raises(KernelInputError, match=r"\(N, k\)"):
        moe_gemv(x, ids, w[:, :1], gate, up, down)
    with pytest.raises(KernelInputError, match="down"):
        moe_gemv(x, ids, w, gate, up, down.transpose(1, 2))
    with pytest.raises(KernelInputError, match="dtype"):
        moe_gemv(x, ids, w, gate, up.double(), down)


# ---- on the device: a real shape in bf16, and both ops inside a captured CUDA graph


def _real(n: int, gated: bool, e: int = 128, k: int = 8, d: int = 2048, i: int = 768):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(n, d, device="cuda", generator=g).bfloat16()
    ids = torch.rand(n, e, device="cuda", generator=g).topk(k, dim=-1).indices
    w = torch.rand(n, k, device="cuda", generator=g).softmax(-1).bfloat16()
    mk = lambda *s: (torch.randn(*s, device="cuda", generator=g) / s[-1] ** 0.5).bfloat16()
    return x, ids, w, mk(e, i, d) if gated else None, mk(e, i, d), mk(e, d, i)


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n", [1, 4, 600])
def test_moe_bf16_real_shape_gpu(monkeypatch, n, gated):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    args = _real(n, gated)
    f64 = [None if t is None else t.double() for t in args]
    f64[1], f64[2] = args[1], args[2].double()
    want = moe_grouped_gemm_ref(*f64).float()
    ref = moe_grouped_gemm_ref(*args)
    for got in (moe_gemv(*args), moe_grouped_gemm(*args)):
        assert rel_err(got, want) <= max(1.5 * rel_err(ref, want), 8e-3)  # fp32 inside, one rounding


@pytest.mark.gpu
def test_moe_ops_run_in_a_cuda_graph(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    args = _real(64, True)
    x, ids = args[0], args[1]
    for op in (moe_gemv, moe_grouped_gemm):
        op(*args)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = op(*args)
        new = _real(65, True)
        x.copy_(new[0][:64])
        ids.copy_(new[1][:64])  # other experts chosen: the replay must read them on the device
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, moe_grouped_gemm_ref(*args)) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n", [1, 4])
def test_moe_gemv_shared_real_shape_gpu(monkeypatch, n, gated):
    """The shared expert in the down launch at Qwen3.5-35B-A3B's shape (hidden 2048, shared 512, gated)
    and a relu2 one, bf16: against float64 within the reference's own error, and inside a CUDA graph."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    args = _real(n, gated, e=256, k=8, d=2048, i=512)
    shared = shared_inputs(n, 2048, 512, gated, gated, torch.bfloat16, "cuda", seed=n)
    f64 = [None if t is None else t.double() for t in args]
    f64[1], f64[2] = args[1], args[2].double()
    want = moe_grouped_gemm_ref(*f64).cpu() + exact_shared(shared, gated)
    ref = moe_gemv_ref(*args, shared=shared)
    got = moe_gemv(*args, shared=shared)
    assert rel_err(got.cpu(), want) <= max(1.5 * rel_err(ref.cpu(), want), 8e-3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe_gemv(*args, shared=shared)
    shared.pre.copy_(torch.randn_like(shared.pre))  # a replay reads the new pre-activations
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out.cpu(), moe_gemv_ref(*args, shared=shared).cpu()) < 1e-2


@pytest.mark.slow
def test_bench_smoke_runs(tmp_path):
    """bench/gpu_moe.py end to end at tiny shapes on the CPU (the interpreter): every config it would
    time is checked against fp32 and the JSON is written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_moe.py"
    out = tmp_path / "moe.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(out)], check=True, timeout=600, env=env
    )
    res = json.loads(out.read_text())
    assert len(res["decode"]) == 4 and len(res["prefill"]) == 2
    assert all(r["best"]["rel_err"] < 2e-2 for r in res["decode"] + res["prefill"])


def test_expert_views_are_read_in_place(dev, monkeypatch):
    """Gate and up as the two halves of one fused (E, 2I, D) tensor, down as a slice of a wider one (as
    a checkpoint with fused experts gives them): the kernels read the views through their strides, with
    no copy of the experts' weights (a copy per call would read every expert, not the chosen ones)."""
    n, k, e, d, i = 3, 2, 5, 40, 24
    x, ids, w, gate, up, down = inputs(n, k, e, d, i, True, torch.float32, dev, seed=7)
    fused = torch.cat([gate, up], dim=1)  # (E, 2I, D)
    wide = torch.cat([down, torch.zeros_like(down)], dim=2)  # (E, D, 2I)
    views = (fused[:, :i], fused[:, i:], wide[:, :, :i])
    assert not any(v.is_contiguous() for v in views)
    copied = []
    real = torch.Tensor.contiguous
    monkeypatch.setattr(
        torch.Tensor, "contiguous", lambda t, *a, **kw: copied.append(t.shape) or real(t, *a, **kw)
    )
    outs = moe_gemv(x, ids, w, *views, config=GEMV), moe_grouped_gemm(x, ids, w, *views, config=GEMM)
    monkeypatch.undo()
    want = exact(x, ids, w, gate, up, down)
    for got in outs:
        assert rel_err(got.double().cpu(), want) < TOL[torch.float32]
    assert (e, i, d) not in copied and (e, d, i) not in copied, copied


# ---- the launch-config sweep (bench/gpu_moe_tune.py) and the table of its picks (kernels/moe_tuned.py)


def _bench_module(name: str):
    """A module of bench/ (its scripts import their siblings by bare name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


TUNE = _bench_module("gpu_moe_tune")
LAUNCHES = TUNE.LAUNCHES
PAIRS = sorted({(r, c) for r, c, _ in LAUNCHES})
CHEAP = dict(block_i=32, block_d_in=32, block_d=32, block_i_in=32)  # the other kernel's blocks


def _warps(dev: str, rows: int, cols: int) -> list[int]:
    """The grid's warps for this launch; the interpreter ignores warps, so one run there."""
    warps = [w for r, c, w in LAUNCHES if (r, c) == (rows, cols)]
    return warps if dev == "cuda" else warps[:1]


@pytest.mark.parametrize("rows, cols", PAIRS, ids=[f"r{r}-c{c}" for r, c in PAIRS])
def test_every_grid_launch_matches_the_reference(dev, rows, cols):
    """(rows, cols) as the gate|up kernel's (block_i, block_d_in) at D=137, I=21 (both activations), and
    as the down kernel's (block_d, block_i_in) at D=21, I=137 with a shared expert of hidden 37."""
    for w in _warps(dev, rows, cols):
        up_cfg = MoeGemvConfig(**{**CHEAP, "block_i": rows, "block_d_in": cols, "num_warps": w})
        for gated in (True, False):
            args = inputs(2, 2, 5, 137, 21, gated, torch.float32, dev, seed=rows + cols + gated)
            got = moe_gemv(*args, config=up_cfg)
            assert rel_err(got.cpu(), moe_gemv_ref(*args).cpu()) < TOL[torch.float32], (up_cfg, gated)
        down_cfg = MoeGemvConfig(**{**CHEAP, "block_d": rows, "block_i_in": cols, "num_warps": w})
        args = inputs(2, 2, 5, 21, 137, True, torch.float32, dev, seed=rows * cols)
        shared = shared_inputs(2, 21, 37, True, True, torch.float32, dev, seed=rows)
        got = moe_gemv(*args, config=down_cfg, shared=shared)
        want = moe_gemv_ref(*args, shared=shared)
        assert rel_err(got.cpu(), want.cpu()) < TOL[torch.float32], down_cfg


def test_clamped_is_the_launch_of_triton_moe():
    """MoeGemvConfig.clamped gives the blocks moe_gemv_triton launches: each at most the next power of two
    of its axis."""
    triton = pytest.importorskip("triton")
    cfg = MoeGemvConfig(block_i=64, block_d_in=1024, block_d=32, block_i_in=2048, num_warps=8)
    for d, i in [(137, 21), (2048, 512), (2688, 1856), (1, 1), (64, 33)]:
        c = cfg.clamped(d, i)
        p2 = triton.next_power_of_2
        assert (c.block_i, c.block_d_in) == (min(64, p2(i)), min(1024, p2(d)))
        assert (c.block_d, c.block_i_in) == (min(32, p2(d)), min(2048, p2(i)))
        assert c.num_warps == 8


def test_grid_holds_the_rule_and_sensible_tiles():
    """The grid has the current rule's launches at the two benchmark shapes, and each launch keeps a
    thread's share of the tile at 16-32 elements."""
    for n, k, d, i in [(1, 8, 2048, 512), (4, 8, 2048, 512), (1, 6, 2688, 1856), (4, 6, 2688, 1856)]:
        c = heuristic_gemv_config(n, k, d, i)
        assert (c.block_i, c.block_d_in, c.num_warps) in LAUNCHES
        assert (c.block_d, c.block_i_in, c.num_warps) in LAUNCHES
    assert 20 <= len(LAUNCHES) <= 40 and len(set(LAUNCHES)) == len(LAUNCHES)
    assert all(16 <= r * c // (32 * w) <= 32 for r, c, w in LAUNCHES)
    base = MoeGemvConfig(block_i=4, block_d_in=512, block_d=8, block_i_in=256, num_warps=4)
    assert {(c.block_d, c.block_i_in) for c in TUNE.up_stage(base)} == {(8, 256)}
    down = TUNE.down_stage(base)
    assert {(c.block_i, c.block_d_in, c.num_warps) for c in down} == {(4, 512, 4)}
    assert len(down) == sum(w == 4 for *_, w in LAUNCHES)


def test_sweep_runs_both_stages_on_the_kernel(dev):
    """The two-stage sweep with the real kernel (check against the reference, wall-clock time) at a small
    shape: every planned point runs, the down stage keeps the fastest up launch, the best is the
    quickest point, and the printed table line names it."""
    import time

    n, k, d, i = 1, 2, 40, 24
    args = inputs(n, k, 4, d, i, True, torch.float32, dev, seed=5)
    want = moe_gemv_ref(*args)

    def measure(cfg: MoeGemvConfig) -> dict:
        t = time.perf_counter()
        err = rel_err(moe_gemv(*args, config=cfg).cpu(), want.cpu())
        return {"ok": err < TOL[torch.float32], "rel_err": err, "us": (time.perf_counter() - t) * 1e6}

    first = [("default", heuristic_gemv_config(n, k, d, i))]
    launch = lambda c: replace(c.clamped(d, i), num_warps=0)  # the interpreter ignores warps
    res = TUNE.sweep(measure, first, launch if dev == "cpu" else (lambda c: c.clamped(d, i)), 1e12)
    pts = res["points"]
    assert res["complete"] and all(s["run"] == s["planned"] > 0 for s in res["stages"].values())
    assert pts[0]["stage"] == "default" and all(p["ok"] for p in pts)
    assert res["best"] == min(pts, key=lambda p: p["us"])
    ups = [p for p in pts if p["stage"] in ("default", "up")]
    top = min(ups, key=lambda p: p["us"])["config"]
    for p in pts[len(ups) :]:
        assert p["stage"] == "down"
        assert [p["config"][f] for f in ("block_i", "block_d_in", "num_warps")] == [
            top[f] for f in ("block_i", "block_d_in", "num_warps")
        ]
    keys = [launch(MoeGemvConfig(**p["config"])) for p in pts]
    assert len(set(keys)) == len(keys)  # no launch timed twice
    line = TUNE.table_entry((d, i, k, 1), res, "test card")
    assert line.startswith(f"({d}, {i}, {k}, 1): MoeGemvConfig(block_i={res['best']['config']['block_i']},")
    assert "test card" in line


def test_batch_bucket():
    assert [batch_bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9)] == [1, 1, 2, 4, 4, 8, 8, 16]


def test_table_entries_are_well_formed():
    """Whatever the table holds (filled from a sweep's printed lines): positive shapes, a power-of-two
    batch bucket, power-of-two blocks."""
    pow2 = lambda v: v > 0 and v & (v - 1) == 0
    for (d, i, k, bucket), cfg in GEMV_TUNED.items():
        assert d > 0 and i > 0 and k > 0 and pow2(bucket)
        assert isinstance(cfg, MoeGemvConfig)
        assert all(
            pow2(getattr(cfg, f)) for f in ("block_i", "block_d_in", "block_d", "block_i_in", "num_warps")
        )


def test_default_gemv_config_reads_the_table(dev, monkeypatch):
    """An entry for a shape and batch bucket is what moe_gemv launches when no config is passed; without
    one the rule's config is."""
    import hybrid_agent.kernels.triton_moe as tm

    n, k, e, d, i = 3, 2, 4, 40, 24
    entry = MoeGemvConfig(block_i=2, block_d_in=32, block_d=8, block_i_in=16, num_warps=2)
    assert default_gemv_config(n, k, d, i) == heuristic_gemv_config(n, k, d, i)  # no entry here
    monkeypatch.setitem(GEMV_TUNED, (d, i, k, 4), entry)
    assert default_gemv_config(n, k, d, i) == entry == default_gemv_config(4, k, d, i)
    assert default_gemv_config(2, k, d, i) == heuristic_gemv_config(2, k, d, i)  # bucket 2: none
    used = []
    real = tm.moe_gemv_triton
    monkeypatch.setattr(tm, "moe_gemv_triton", lambda *a: used.append(a[6]) or real(*a))
    args = inputs(n, k, e, d, i, True, torch.float32, dev, seed=2)
    got = moe_gemv(*args)
    assert used == [entry]
    assert rel_err(got.cpu(), moe_gemv_ref(*args).cpu()) < TOL[torch.float32]


def test_bench_tune_smoke_writes_its_keys(tmp_path, monkeypatch):
    """bench/gpu_moe.py --smoke --tune (tune alone, batch 1, no budget: each pair's default only) runs on
    the CPU and writes the sweep's keys."""
    if not interpreter_on():
        pytest.skip("the in-process smoke run needs TRITON_INTERPRET=1 (tests/conftest.py on the CPU)")
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    import gpu_moe

    out = tmp_path / "moe.json"
    argv = [
        "--smoke",
        "--tune",
        "--sections",
        "",
        "--batches",
        "1",
        "--tune-budget-s",
        "0",
        "--out",
        str(out),
    ]
    gpu_moe.main(argv)
    res = json.loads(out.read_text())
    tune = res["tune"]
    assert res["decode"] == [] and res["prefill"] == []
    assert {"budget_s", "rep_ms", "launches", "rows", "complete", "seconds"} <= tune.keys()
    assert tune["launches"] == [list(t) for t in LAUNCHES] and tune["complete"] is False
    assert [(r["shape"], r["tokens"]) for r in tune["rows"]] == [(s, 1) for s in gpu_moe.SMOKE]
    for r in tune["rows"]:
        shape = gpu_moe.SMOKE[r["shape"]]
        assert r["key"] == [shape["d"], shape["i"], shape["k"], 1]
        assert {
            "points",
            "best",
            "default",
            "stages",
            "speedup_vs_default",
            "table_entry",
            "with_shared",
        } <= r.keys()
        assert r["stages"]["up"]["run"] == 0 < r["stages"]["up"]["planned"] and not r["complete"]
        assert r["points"][0]["stage"] == "default" and r["best"]["ok"] and r["best"]["rel_err"] < 2e-2
        assert r["default"]["config"] == default_gemv_config(1, shape["k"], shape["d"], shape["i"]).__dict__
        assert r["table_entry"].startswith(f"({shape['d']}, {shape['i']}, {shape['k']}, 1): MoeGemvConfig(")
        assert r["with_shared"]["best"]["ok"]
    with pytest.raises(SystemExit):
        gpu_moe.parse_args(["--sections", "decode,bogus"])
    with pytest.raises(SystemExit):
        gpu_moe.parse_args(["--batches", "1,x"])
