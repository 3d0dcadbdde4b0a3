"""Fuzzing the command line's parsing (agent/cli.py `build_parser`).

Whatever the arguments, parsing either succeeds or is argparse's usage error: exit status 2 with a
`usage:` line and one `error:` line on stderr, never a traceback. (`--help` and `--version` exit 0.)
Whole-number options parse to numbers within their bounds.
"""

from __future__ import annotations

import contextlib
import io

from hybrid_agent.agent.cli import build_parser
from hypothesis import given
from hypothesis import strategies as st

WORDS = [
    "run",
    "sessions",
    "list",
    "show",
    "fork",
    "rm",
    "export",
    "--model",
    "--db",
    "--workspace",
    "--device",
    "--window",
    "--sinks",
    "--seed",
    "--temperature",
    "--max-new-tokens",
    "--enable-commands",
    "--debug",
    "--resume",
    "--json",
    "--yes",
    "-y",
    "--turn",
    "--help",
    "--version",
    "--",
    "-",
    "--win",
    "--temp=",
    "--window=0",
    "--sinks=-1",
    "-1",
    "0",
    "7",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "1" * 5000,
    "0x10",
    "１２",
    "",
    "=",
    "-=",
    "--=x",
    "\0",
    "\udcff",
]
ARGS = st.lists(
    st.sampled_from(WORDS) | st.text(st.characters(codec=None, exclude_categories=()), max_size=8), max_size=8
)


def parse(argv: list[str]) -> tuple[int | None, str]:
    """(None, "") when parsing succeeds, else (exit status, stderr)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code, err.getvalue()
    for name, low in (("window", 1), ("sinks", 0), ("max_new_tokens", 1)):
        value = getattr(args, name, None)
        assert value is None or value >= low, (name, value)
    seed = getattr(args, "seed", None)
    assert seed is None or isinstance(seed, int)
    return None, ""


def check(argv: list[str]) -> None:
    code, err = parse(argv)
    if code is None or code == 0:
        return
    assert code == 2, (code, err)
    # (The error line quotes the arguments, which may hold line breaks themselves.)
    assert err.startswith("usage: hybrid-agent"), err
    assert any(line.startswith("hybrid-agent") and ": error: " in line for line in err.splitlines()), err


def test_random_arguments_parse_or_exit_2_with_usage(budget) -> None:
    @budget
    @given(ARGS)
    def prop(argv: list[str]) -> None:
        check(argv)

    prop()


def test_random_subcommand_arguments_parse_or_exit_2_with_usage(budget) -> None:
    @budget
    @given(st.sampled_from([["run"], ["sessions"], ["sessions", "fork"], ["sessions", "show"]]), ARGS)
    def prop(head: list[str], argv: list[str]) -> None:
        check(head + argv)

    prop()


LOW = {"--window": 1, "--sinks": 0, "--max-new-tokens": 1, "--seed": None}


def test_whole_number_options_parse_in_bounds_or_exit_2(budget) -> None:
    """Whole-number options (agent/cli.py's `_number`, `type=int`) give an int within the option's
    bounds, or a usage error for any other text."""

    @budget
    @given(
        st.sampled_from(sorted(LOW)),
        st.sampled_from(WORDS) | st.integers().map(str) | st.floats().map(str) | st.text(max_size=6),
    )
    def prop(option: str, value: str) -> None:
        code, _ = parse([option, value])
        if code is not None:
            assert code == 2
            return
        number = getattr(build_parser().parse_args([option, value]), option[2:].replace("-", "_"))
        assert isinstance(number, int) and (LOW[option] is None or number >= LOW[option])

    prop()
