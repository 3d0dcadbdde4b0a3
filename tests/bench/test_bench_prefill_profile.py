"""bench/gpu_prefill_profile.py's smoke mode (a toy OLMo Hybrid shape on the CPU, the profiler with CPU
activities only) runs the paths the device run takes: the chunk sweep, the labelled profile and the
limits. The labels are checked against the model's structure (every linear call lands in the label of
the part that holds it, once per chunk), the per-kind times against the profile's total, the linears'
FLOPs against torch's own FLOP counter, and bad flags get a one-line error."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")


@pytest.fixture
def bench(bench_script: Any) -> Any:
    return bench_script("gpu_prefill_profile")


def _tiny_model() -> nn.Module:
    import gpu_olmo

    return gpu_olmo.adopt_weights(
        gpu_olmo.build_hf(gpu_olmo.hf_config(True), torch.device("cpu"), torch.float32)
    )


def _linears(module: nn.Module | None) -> int:
    return 0 if module is None else sum(isinstance(m, nn.Linear) for m in module.modules())


def test_smoke_run(bench, tmp_path: Path) -> None:
    out = tmp_path / "pp.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy shapes: threads only contend for the test machine's cores
    try:
        res = bench.main(
            ["--tiny", "--lengths", "80", "--chunks", "32,96,128", "--profile-chunk", "32", "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.is_grad_enabled()  # the run turned autograd off for itself only (later tests train)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file holds the last state
    sweep = res["sweep_80"]
    assert [r["chunk"] for r in sweep] == [32, 96, 128]
    assert sweep[0]["tok_s"] > 0 and sweep[1]["tok_s"] > 0
    assert sweep[2]["skipped"] == "one chunk of T, as chunk 96"  # both are one chunk of 80 tokens

    prof = res["profile_80"]
    assert prof["T"] == 80 and prof["chunk"] == 32
    kinds = prof["by_kind"]
    model = _tiny_model()
    layer_kinds = set(model.config.layer_types)
    assert layer_kinds == {"gated_deltanet", "attention"}
    parts = {f"{k}.{p}" for k in layer_kinds for p in ("mixer", "mlp", "norm", "residual")}
    assert parts | {"embed", "head", "other"} == set(kinds), sorted(kinds)
    # the per-kind times add up to the profile's total, and nothing ran outside the labels
    assert math.isclose(sum(r["ms"] for r in kinds.values()), prof["total_ms"], rel_tol=0.02)
    assert math.isclose(prof["attributed_ms"], prof["total_ms"], rel_tol=0.02) and prof["unowned"] == []
    assert math.isclose(sum(r["share"] for r in kinds.values()), 1.0, rel_tol=0.02)
    for kind, row in kinds.items():
        assert math.isclose(sum(row["classes_ms"].values()), row["ms"], rel_tol=1e-6), kind
    assert "gemm" in kinds["gated_deltanet.mlp"]["classes_ms"]
    # each linear call in the label of the part that holds it: 3 chunks of 32 tokens for 80
    want: dict[str, int] = {}
    for block in model.layers:
        for part, mod in (("mixer", block.mixer), ("mlp", block.mlp)):
            want[f"{block.kind}.{part}"] = want.get(f"{block.kind}.{part}", 0) + 3 * _linears(mod)
    want["head"] = 1  # the last chunk only
    got = {k: r["linear_calls"] for k, r in kinds.items() if r["linear_calls"]}
    assert got == want
    top = prof["top_kernels"]
    assert 0 < len(top) <= 25 and all(a["ms"] >= b["ms"] for a, b in itertools.pairwise(top))
    # limits: the larger of the FLOP and byte times, efficiency = limit / measured
    for kind in ("gated_deltanet.mixer", "attention.mixer", "attention.mlp", "head"):
        row = kinds[kind]
        assert row["flops"] > 0 and row["limit_ms"] == max(row["flop_ms"], row["byte_ms"]) > 0
        assert math.isclose(row["efficiency"], row["limit_ms"] / row["ms"])
    total = prof["total"]
    assert math.isclose(total["flops"], sum(r["flops"] for r in kinds.values() if "flops" in r))
    assert total["flop_limit_tok_s"] > total["roofline_tok_s"] * 0.999 and total["plain_tok_s"] > 0


def test_linear_flops_match_torch_flop_counter(bench) -> None:
    """The limits' FLOPs of each mixer's and MLP's linears, and the head's, against
    torch.utils.flop_counter on the model's own forward (one chunk: the head runs over all of it)."""
    from gpu_prefill_limits import kind_costs, linear_cost
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny_model()
    T = 48
    with FlopCounterMode(display=False) as fc:
        model(torch.randint(0, model.config.vocab_size, (1, T)), model.new_state())
    counts = fc.get_flop_counts()
    mm = torch.ops.aten.mm
    for i, block in enumerate(model.layers):
        for part in ("mixer", "mlp"):
            assert linear_cost(getattr(block, part), T, 1, 4)[0] == counts[f"HybridLM.layers.{i}.{part}"][mm]
    costs = kind_costs(model, T, T)
    layers = sum(counts[f"HybridLM.layers.{i}"][mm] for i in range(len(model.layers)))
    assert costs["head"]["flops"] == counts["HybridLM"][mm] - layers
    assert costs["gated_deltanet.mlp"]["flops"] == sum(
        counts[f"HybridLM.layers.{i}.mlp"][mm]
        for i, b in enumerate(model.layers)
        if b.kind == "gated_deltanet"
    )


def test_peak_table(bench) -> None:
    from gpu_prefill_limits import peaks

    assert peaks("NVIDIA H100 80GB HBM3")["bf16_TFLOPs"] == 989.0
    assert peaks("NVIDIA H200")["bf16_TFLOPs"] == 989.0 and peaks("NVIDIA H200")["HBM_TBps"] == 4.8
    assert peaks("NVIDIA H100 PCIe")["match"] == "H100 PCIe"
    assert peaks("cpu")["assumed"] and not peaks("NVIDIA H100 80GB HBM3")["assumed"]


@pytest.mark.parametrize(
    "argv, message",
    [(["--lengths", "4k,x"], "argument --lengths: expected a comma list"),
     (["--chunks", "0"], "argument --chunks: expected positive token counts"),
     (["--sections", "sweep,decode"], "--sections takes sweep and/or profile")],
)  # fmt: skip
def test_bad_flags(bench, tmp_path: Path, capsys: Any, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", *argv, "--out", str(tmp_path / "o.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not (tmp_path / "o.json").exists()


def test_both_paths_in_one_run(bench, tmp_path: Path, monkeypatch: Any) -> None:
    """`--causal both`: each section once per path, under the switch the model's Ops read, and their
    ratio; the switch is left as it was."""
    from hybrid_agent.model.ops import CAUSAL_PREFILL_ENV

    monkeypatch.delenv(CAUSAL_PREFILL_ENV, raising=False)
    out = tmp_path / "pp.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = bench.main(
            ["--tiny", "--lengths", "48", "--chunks", "16,32", "--profile-chunk", "16", "--reps", "1",
             "--causal", "both", "--out", str(out)]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert CAUSAL_PREFILL_ENV not in os.environ
    assert res["causal"] == ["on", "off"]
    for suffix, on in (("_causal", True), ("", False)):
        assert [r["chunk"] for r in res[f"sweep_48{suffix}"]] == [16, 32]
        assert all(r["causal_prefill"] is on and r["tok_s"] > 0 for r in res[f"sweep_48{suffix}"])
        assert res[f"profile_48{suffix}"]["causal_prefill"] is on
        assert "attention.mixer" in res[f"profile_48{suffix}"]["by_kind"]
    cmp = res["causal_vs_masked_48"]
    assert [r["chunk"] for r in cmp["sweep"]] == [16, 32]
    for r in cmp["sweep"]:
        assert math.isclose(r["speedup"], r["causal_tok_s"] / r["masked_tok_s"])
    mix = cmp["profile"]["by_kind"]["attention.mixer"]
    assert math.isclose(mix["ratio"], mix["masked_ms"] / mix["causal_ms"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
