"""The README never lies: its set-up commands are the ones CI runs, and its CLI commands parse."""
import re
import shlex
from pathlib import Path

import pytest

from minibert.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def shell_blocks():
    """Every line of every ```bash / ```sh fenced block in the README."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", README, flags=re.S):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def setup_commands():
    return [ln for ln in shell_blocks() if ln.startswith("pip install torch==2.13.0")]


def test_two_setup_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = setup_commands()
    assert main_cmd.endswith("minibert pretrain")
    assert test_cmd.endswith("python -m pytest")
    ci_lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    assert test_cmd in ci_lines, ".ci/run must call exactly the README's test command"


def test_torch_is_pinned_to_the_cpu_build_everywhere():
    for cmd in setup_commands():
        assert "torch==2.13.0" in cmd and "--no-build-isolation" in cmd


@pytest.mark.parametrize("line", [ln for ln in shell_blocks() if ln.startswith("minibert ")])
def test_every_cli_line_in_the_readme_parses(line):
    argv = shlex.split(line, comments=True)[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.run)
