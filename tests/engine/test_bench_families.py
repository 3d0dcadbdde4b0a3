"""bench/gpu_families.py's smoke mode (toy Qwen3.5 dense and MoE shapes on the CPU) runs end to end, so
the GPU benchmark cannot rot unseen: ours equals transformers on the same weights, every section fills
its rows (transformers' cache grown to each context, its `generate` timed), the floor counts only the
active experts, and bad flags get a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
# the model classes load at collection, as a top-level import would (seconds of import, not of the test)
_ = transformers.Qwen3_5ForCausalLM, transformers.Qwen3_5MoeForCausalLM


@pytest.fixture
def families(bench_script: Any) -> Any:
    return bench_script("gpu_families")


def smoke(families: Any, out: Path, *argv: str) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy shapes: threads only contend for the test machine's cores
    try:
        res = families.main(["--smoke", "--steps", "1", "--hf-steps", "1", *argv, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert torch.is_grad_enabled()  # the run's no_grad ends with it: later tests in the process train
    return res


def check_shape(res: dict[str, Any], shape: str, contexts: list[int], prefill: int) -> None:
    check = res[f"{shape}.check"]
    assert check["logits_rel_diff"] < 1e-4 and check["greedy_identical_prefix"] == check["greedy_tokens"]
    ours, hf = res[f"{shape}.decode_ours"], res[f"{shape}.decode_hf"]
    assert [r["ctx"] for r in ours] == [r["ctx"] for r in hf] == contexts
    assert all(r["tok_s"] > 0 and r["floor_tok_s"] > 0 for r in ours)
    assert all(r["tok_s"] > 0 and isinstance(r["generate_tok_s"], float) for r in hf), hf
    assert all(f"grown to {c} " in r["cache"] for r, c in zip(hf, contexts, strict=True))
    assert res[f"{shape}.prefill_ours"]["T"] == res[f"{shape}.prefill_hf"]["T"] == prefill
    for baseline in ("decode_nsplit64", "decode_cublas"):
        assert [r["ctx"] for r in res[f"{shape}.{baseline}"]] == contexts


def test_smoke_run_moe(families, tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    res = smoke(families, out, "--shapes", "moe", "--contexts", "20", "--prefill", "12")
    assert json.loads(out.read_text())["contexts"] == [20]
    check_shape(res, "moe", [20], 12)
    row, m = res["moe.decode_ours"][0], res["moe.model"]["moe"]
    # 16 experts, top 4: 12 of 16 idle in each of the 4 MoE layers (gate, up, down: hidden x 64, fp32)
    assert row["idle_experts_GB"] == pytest.approx(4 * 12 * 3 * m["hidden"] * 64 * 4 / 1e9)


@pytest.mark.slow
def test_smoke_run_both_shapes(families, tmp_path: Path) -> None:
    res = smoke(families, tmp_path / "f.json", "--contexts", "24,40", "--steps", "2", "--prefill", "20")
    for shape in ("dense", "moe"):
        check_shape(res, shape, [24, 40], 20)
    assert res["dense.decode_ours"][0]["idle_experts_GB"] == 0


@pytest.mark.parametrize("bad", [["--contexts", "1k,x"], ["--shapes", "dense,big"], ["--contexts", ","]])
def test_bad_flags_get_one_line_errors(families, bad, capsys) -> None:
    with pytest.raises(SystemExit):
        families.parser().parse_args(["--out", "x.json", *bad])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --" in err and ("--contexts" in err or "--shapes" in err)


def test_ours_reads_transformers_tensors_in_place(families) -> None:
    """Both 35B-A3B-shaped models fit one card only if ours shares transformers' tensors: the stacked
    experts, the Gated DeltaNet projections and the head are views of them, not copies."""
    import gpu_families_models as m

    hf = m.build_hf(m.hf_config("moe", True), torch.device("cpu"), torch.float32)
    ours = m.adopt_weights(hf)

    def shared(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    ref = hf.model.layers[0]
    assert shared(ours.layers[0].mlp.experts.gate_proj, ref.mlp.experts.gate_up_proj)
    assert shared(ours.layers[0].mlp.experts.up_proj, ref.mlp.experts.gate_up_proj)
    assert shared(ours.layers[0].mixer.v_proj.weight, ref.linear_attn.in_proj_qkv.weight)
    assert shared(ours.lm_head.weight, hf.lm_head.weight)


def test_written_out_shapes_are_transformers_defaults(families) -> None:
    """The shapes ours is built from where transformers has no Qwen3.5 are the ones its configs give."""
    import gpu_families_models as m
    from hybrid_agent.model.checkpoints import qwen3_5

    for shape, cls in (("dense", transformers.Qwen3_5TextConfig), ("moe", transformers.Qwen3_5MoeTextConfig)):
        want = qwen3_5.hybrid_config(cls().to_dict())
        assert m.our_config(shape, tiny=False).model_dump() == want.model_dump(), shape


def test_smoke_run_without_transformers(families, tmp_path: Path) -> None:
    res = smoke(
        families, tmp_path / "f.json", "--no-hf", "--shapes", "dense", "--contexts", "20", "--prefill", "12"
    )
    assert res["dense.transformers"] == {"skipped": "--no-hf"} and res["dense.check"] == {
        "skipped": "--no-hf"
    }
    assert [r["ctx"] for r in res["dense.decode_ours"]] == [20] and res["dense.prefill_ours"]["T"] == 12


def test_gemv_sweep_shapes_of_the_moe_engine(families) -> None:
    """--gemv-sweep tunes the matmuls the MoE engine's step runs: the stacked router | shared gate | up |
    shared-expert gate of the fused MoE step (model/decode/moe_step.py; the shared down runs inside
    kernels.moe_gemv), the stacked Gated DeltaNet and gated-attention inputs, the head; without the fused
    MoE step, the shared expert's gate|up and down."""
    import gpu_families_models as m
    from gpu_gemv import engine_shapes
    from hybrid_agent.model.decode.engine import DecodeEngine

    model = m.build_ours("moe", True, torch.device("cpu"), torch.float32)
    engine = DecodeEngine(model, max_context=16, attention="kernel")
    shapes = engine_shapes(engine)
    shared, experts = m.TINY["moe"]["shared_expert_intermediate_size"], m.TINY["moe"]["num_experts"]
    key, value = 2 * 16 * 2, 16 * 4  # q|k (2 heads of 16 each), v (4 heads of 16)
    common = {
        "gdn_in": (key + value + 2 * 4 + value, 64), "gdn_out": (64, value),
        "attn_in": ((4 + 2 * 2 + 4) * 32, 64), "attn_out": (64, 4 * 32), "head": (512, 64),
    }  # fmt: skip
    assert shapes == {**common, "gate_up": (experts + 2 * shared + 1, 64)}
    engine.moe_fused = False
    assert engine_shapes(engine) == {**common, "gate_up": (2 * shared, 64), "down": (64, shared)}
