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


FILL_MASK_RESULTS = REPO / "benchmarks" / "results" / "fill_mask_held_out-cpu-2c.json"


@pytest.mark.slow
def test_the_fill_mask_example_is_a_held_out_prompt_the_default_model_gets():
    """The README's fill-mask example comes from `minibert fill-mask --held-out` on the default 5-minute model
    (its results are saved in benchmarks/results): it is one of those held-out prompts, the right word is in
    the model's top 5 there, its sentence occurs in no training document of the built-in corpus, and the
    README quotes that file's counts."""
    import json

    from minibert.train.data import read_split
    results = json.loads(FILL_MASK_RESULTS.read_text(encoding="utf-8"))
    # the example is the command followed by its output as a comment line
    ((example, shown),) = re.findall(r'minibert fill-mask --model runs/pretrain "([^"]+)"\n#   \[MASK\]: (.+)', README)
    (row,) = [r for r in results["rows"] if r["text"] == example]
    assert row["rank"] is not None and row["rank"] <= 5, row
    assert shown.split()[::2] == [token for token, _ in row["top"]]  # the output shown is the saved one
    assert f"{results['top5_hits']} of the {results['prompts']} held-out prompts" in README
    assert f"{results['top1']} first guesses" in README
    trained, held_out = read_split(["builtin"], 10)

    def normal(sentence):
        return " ".join(sentence.split()).lower()
    before, after = (normal(part) for part in example.split("[MASK]"))
    matches = lambda s: normal(s).startswith(before) and normal(s).endswith(after)  # noqa: E731
    assert any(matches(s) for doc in held_out for s in doc)
    assert not any(matches(s) for doc in trained for s in doc)
