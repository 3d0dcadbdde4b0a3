"""Documents the repository points at are in the repository: every design note or README a docstring,
comment or document names resolves to a file here (never to a path outside the checkout), every results
file under bench/results/ is cited by name from a document, script or test, and every results file
docs/results.md cites exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml"}
# An upper-case document name (README.md, NOTES.md, ...) or any file under docs/, with its path.
DOC_REF = re.compile(r"(?<![\w./-])(/?(?:\.\./)*(?:[\w-]+/)*(?:[A-Z][A-Z0-9_-]*|docs/[\w-]+)\.md)(?![\w-])")


def _tracked() -> list[Path]:
    """The repository's text files (git's list when there is one; else a walk that skips hidden and
    virtualenv folders)."""
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        )
        files = [REPO / line for line in out.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        files = [
            p for p in REPO.rglob("*") if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
        ]
    return [p for p in files if (p.suffix in TEXT_SUFFIXES or p.name == "Makefile") and p.is_file()]


def _resolves(ref: str, source: Path, names: set[str]) -> bool:
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
