"""Documents the repository points at are in the repository: every design note or README a docstring,
comment or document names resolves to a file here (never to a path outside the checkout), every results
file under bench/results/ is cited by name from a document, script or test, and every results file
docs/results.md cites exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml"}
# An upper-case document name (README.md, NOTES.md, ...) or any file under docs/, with its path.
# Files hybrid-agent reads from the user's project (agent/project_memory.py), not documents of this one.
WORKSPACE_FILES = {"AGENTS.md"}
DOC_REF = re.compile(r"(?<![\w./-])(/?(?:\.\./)*(?:[\w-]+/)*(?:[A-Z][A-Z0-9_-]*|docs/[\w-]+)\.md)(?![\w-])")


def _tracked() -> list[Path]:
    """The repository's text files (git's list when there is one; else a walk that skips hidden and
    virtualenv folders)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        files = [REPO / line for line in out.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        files = [
            p for p in REPO.rglob("*") if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
        ]
    return [p for p in files if (p.suffix in TEXT_SUFFIXES or p.name == "Makefile") and p.is_file()]


def _resolves(ref: str, source: Path, names: set[str]) -> bool:
    if ref in WORKSPACE_FILES:
        return True
    if ref.startswith("/"):
        return False  # an absolute path is someone's machine, not the repository
    if "/" not in ref and ref in names:
        return True  # a bare name of a document the repository has (README.md, NOTES.md)
    for base in (REPO, source.parent):
        target = (base / ref).resolve()
        if target.is_relative_to(REPO) and target.is_file():
            return True
    return False


def test_reference_checker_rejects_outside_paths(tmp_path: Path) -> None:
    source = REPO / "model" / "__init__.py"
    names = {"README.md"}
    assert _resolves("docs/interfaces.md", source, names)
    assert _resolves("README.md", source, names)
    for outside in ("../shared/X.md", "/work/shared/X.md", "MISSING.md", "docs/missing.md"):
        assert not _resolves(outside, source, names), outside
    assert DOC_REF.findall("see ../shared/DOC.md and docs/results.md, not notes.md") == [
        "../shared/DOC.md",
        "docs/results.md",
    ]


def test_every_document_named_is_in_the_repository() -> None:
    files = _tracked()
    assert any(p.name == "README.md" for p in files)  # the list is the real checkout
    names = {p.name for p in files if p.suffix == ".md"}
    bad = []
    for path in files:
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            bad += [
                f"{path.relative_to(REPO)}:{n}: {ref}"
                for ref in DOC_REF.findall(line)
                if not _resolves(ref, path, names)
            ]
    assert not bad, "documents named but not in the repository:\n" + "\n".join(bad)


def _cited(name: str, texts: dict[Path, str]) -> list[Path]:
    pattern = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])")
    return [path for path, text in texts.items() if pattern.search(text)]


def test_every_results_file_is_cited_and_every_cited_one_exists() -> None:
    texts = {
        p: p.read_text(encoding="utf-8", errors="replace")
        for p in _tracked()
        if not p.is_relative_to(RESULTS)
    }
    stored = sorted(p.name for p in RESULTS.glob("*.json"))
    assert "gpu_e2e_s3.json" in stored  # the decode table's file: the glob sees the real folder
    uncited = [name for name in stored if not _cited(name, texts)]
    assert not uncited, f"bench/results/ files no document, script or test names: {uncited}"
    results_doc = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?:(?<=bench/results/)|(?<![\w./-]))([a-z][\w-]*\.json)", results_doc))
    assert {"gpu_e2e_s3.json", "eval_default_model.json"} <= named
    missing = sorted(name for name in named if not (RESULTS / name).is_file())
    assert not missing, f"docs/results.md cites files bench/results/ does not have: {missing}"


def _table(doc: str, header_start: str) -> list[list[str]]:
    """The body rows of the first markdown table whose header row starts with `header_start`."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_results_decode_and_kernel_tables_match_their_json() -> None:
    doc = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    load = lambda name: json.loads((RESULTS / name).read_text(encoding="utf-8"))
    s3, final = load("gpu_e2e_s3.json"), load("gpu_e2e_final.json")
    cublas = {r["ctx"]: r for r in s3["decode_cublas"]}
    hf = {r["ctx"]: r["tok_s"] for r in final["transformers"]["decode"]}
    want = [
        [
            f"{r['ctx'] // 1024}k",
            f"{r['tok_s']:.1f}",
            f"{cublas[r['ctx']]['tok_s']:.1f}",
            f"{1000 / r['floor_ms']:.1f}",
            f"{100 * r['vs_floor']:.1f}%",
            f"{hf[r['ctx']]:.1f}",
            f"{r['tok_s'] / hf[r['ctx']]:.1f}x",
        ]
        for r in s3["decode_ours"]
    ]
    assert _table(doc, "| context | ours tok/s") == want
    prefill = (
        load("gpu_kernels_s4_final.json")["prefill"] + load("gpu_kernels_s4_final_prefill.json")["prefill"]
    )
    speedups = [row[2:5] for row in _table(doc, "| kernel | shape")]
    by_shape: dict[str, list[str]] = {}
    for r in sorted(prefill, key=lambda r: r["T"]):
        by_shape.setdefault(r["shape"], []).append(f"{r['speedup_vs_fla']:.2f}x")
    assert speedups == [by_shape[s] for s in ("H32_P128_N128_G32", "H32_K128_V128", "olmo_H30_K96_V192")]
