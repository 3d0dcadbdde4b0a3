"""Compile the chunk-scan kernels for an H100 (sm_90) on a machine without a GPU and print what the
compiler made of them: registers per thread, stack (spill) bytes, shared memory, how many loads
became asynchronous copies (software-pipelined) and how many products became wgmma.

    .venv/bin/python bench/triton_resources.py            # the defaults and the listed variants

Uses the local Triton (its bundled ptxas and cuobjdump); the device may run another Triton version,
so read the numbers as leads (kernels/NOTES.md, item 7). Integer arguments that the real launches
see as multiples of 16 are compiled with that divisibility, as Triton specialises them at launch:
without it, loads look unpipelined and the register counts are wrong.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
import triton
from hybrid_agent.kernels import triton_gated_delta_rule as tgdr
from hybrid_agent.kernels import triton_kda as tkda
from hybrid_agent.kernels import triton_ssd_scan as tssd
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

DIV16 = {"T", "H", "G", "P", "N", "DK", "DV", "NCHUNK"}  # multiples of 16 at the benchmark shapes
TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, types: dict[str, str], consts: dict[str, object], warps: int, stages: int):
    sig, cons, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            cons[(i,)] = consts[name]
            continue
        sig[name] = types.get(name, "i32")
        if sig[name].startswith("*") or name in DIV16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=cons, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def resources(kernel) -> str:
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        out = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    ttgir = kernel.asm["ttgir"]
    return (
        f"regs {m.group(1) if m else '?'} stack {m.group(2) if m else '?'} B, "
        f"shared {kernel.metadata.shared} B, async loads {ttgir.count('async_copy_global_to_local')}, "
        f"wgmma {ttgir.count('warp_group_dot ')}"
    )


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=["ssd", "gdn", "kda"], help="only this module")
    ap.add_argument("--variants", help="a JSON list of launch overrides instead of the module's variants")
    ap.add_argument(
        "--fp32",
        action="store_true",
        help="SSD only: the kernels fp32 inputs get (fp32 pointers, IEEE dots, exact state products)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    # A cold cache, so the compile times printed are real (Triton reads this when it compiles).
    cache = tempfile.mkdtemp(prefix="triton-resources-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["TRITON_CACHE_DIR"] = cache
    bf16, f32 = "*bf16", "*fp32"
    gdn_types = {n: bf16 for n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "aqk_ptr", "beta_ptr")}
    gdn_types.update({n: f32 for n in ("g_ptr", "t_ptr", "gam_ptr", "s0_ptr", "final_ptr")}, scale="fp32")
    ssd_types = {n: bf16 for n in ("x_ptr", "B_ptr", "C_ptr", "y_ptr", "states_ptr")}
    ssd_types.update(
        {n: f32 for n in ("dt_ptr", "A_ptr", "D_ptr", "s0_ptr", "final_ptr", "w_ptr", "decay_ptr")}
    )
    if args.fp32:
        ssd_types = dict.fromkeys(ssd_types, f32)
    if args.op in (None, "kda"):
        kda_resources(json.loads(args.variants) if args.variants and args.op == "kda" else [])
    for name, module in (("gdn", tgdr), ("ssd", tssd)):
        if args.op and name != args.op:
            continue
        listed = json.loads(args.variants) if args.variants else module.variant_overrides()
        # the launch each module picks at the benchmark's shape (16k tokens, 32 heads of 128, bf16)
        default = module.launch_config(torch.device("cuda"), (1, 16384, 32, 128), torch.bfloat16)
        for var in [{}, *listed]:
            cfg = asdict(replace(default, **var))
            if name == "gdn" and cfg["fused"]:
                types = dict(gdn_types, t_ptr=bf16 if cfg["fu_t16"] else f32)
                bv = cfg["fu_bv"] or 32
                bk, bk2 = tgdr._k_split(96, bool(cfg["fu_ksplit"])) if cfg["fu_ksplit"] else (128, 0)
                consts = dict(
                    HAS_S0=False, BK=bk, BK2=bk2, BV=bv, IEEE=False, PREC=cfg["fu_prec"],
                    QK_PRE=bool(cfg["qk_pre"]), T16=bool(cfg["fu_t16"]), TMASK=bool(cfg["fu_tmask"]),
                    QK_LOWER=bool(cfg["kkt_lower"]),
                )  # fmt: skip
                k = compile_kernel(tgdr._gdr_fused_kernel, types, consts, cfg["fu_warps"], cfg["fu_stages"])
            elif name == "ssd" and cfg["fused"]:
                consts = dict(
                    HAS_S0=False,
                    HAS_D=True,
                    L=cfg["fu_L"],
                    BP=cfg["fu_bp"],
                    BN=128,
                    IEEE=False,
                    PREC=cfg["fu_prec"],
                )
                k = compile_kernel(
                    tssd._ssd_fused_kernel, ssd_types, consts, cfg["fu_warps"], cfg["fu_stages"]
                )
            elif name == "ssd":
                L = cfg["L"] or 64
                ieee, prec = (True, 1) if args.fp32 else (False, cfg["st_prec"])  # as ssd_scan_triton
                consts = dict(
                    HAS_S0=False, L=L, BP=cfg["st_bp"], BN=cfg["st_bn"], IEEE=ieee, PREC=prec,
                    PRE=bool(cfg["st_pre"] or cfg["st_acc"]), ACC=bool(cfg["st_acc"]),
                )  # fmt: skip
                tag = f"{name} {var or 'default'}{' fp32' if args.fp32 else ''}"
                launches = [
                    ("states", tssd._ssd_states_kernel, consts, cfg["st_warps"], cfg["st_stages"]),
                    ("output", tssd._ssd_output_kernel,
                     dict(HAS_D=True, L=L, BP=cfg["out_bp"], BN=128, IEEE=ieee), cfg["out_warps"], 2),
                ]  # fmt: skip
                for part, fn, part_consts, warps, stages in launches:
                    t0 = time.perf_counter()
                    k = compile_kernel(fn, ssd_types, part_consts, warps, stages)
                    took = time.perf_counter() - t0
                    print(f"{tag} {part}: {resources(k)}, compiled in {took:.1f} s", flush=True)
                continue
            else:
                continue
            print(f"{name} {var or 'default'}: {resources(k)}", flush=True)


def kda_resources(variants: list[dict[str, int]]) -> None:
    """The KDA kkt and fused kernels (kernels/triton_kda.py) at dk = dv = 128, bf16, for the default
    `KdaLaunch` and each of `variants` (overrides of it)."""
    bf16, f32 = "*bf16", "*fp32"
    fused_types = {
        n: bf16 for n in ("qg_ptr", "kg_ptr", "kd_ptr", "kgl_ptr", "kdl_ptr", "v_ptr", "aqk_ptr", "o_ptr")
    }
    fused_types.update(
        {n: f32 for n in ("beta_ptr", "gam_ptr", "t_ptr", "s0_ptr", "final_ptr")}, scale="fp32"
    )
    kkt_types = {"q_ptr": bf16, "k_ptr": bf16, "aqk_ptr": bf16, "gam_ptr": f32, "beta_ptr": f32, "a_ptr": f32}
    for var in [{}, *variants]:
        cfg = replace(tkda.KdaLaunch(), **var)
        consts = dict(HAS_S0=True, BK=128, BV=cfg.fu_bv or 32, IEEE=False, HILO=True, LO=bool(cfg.k_lo))
        k = compile_kernel(tkda._kda_fused_kernel, fused_types, consts, cfg.fu_warps, cfg.fu_stages)
        print(f"kda {var or 'default'} fused: {resources(k)}", flush=True)
        k = compile_kernel(
            tkda._kda_kkt_kernel, kkt_types, dict(BKC=cfg.kkt_bkc, IEEE=True), cfg.kkt_warps, 2
        )
        print(f"kda {var or 'default'} kkt: {resources(k)}", flush=True)


if __name__ == "__main__":
    main()
