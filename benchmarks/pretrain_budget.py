"""What to pretrain in a fixed wall-clock budget: recipe variants of ``minibert pretrain --minutes N``.

    python benchmarks/pretrain_budget.py                       # round 4's variants, 5 minutes each
    python benchmarks/pretrain_budget.py --minutes 2 --variants default round1 seq64 lr1e-3

Each variant is one ``minibert pretrain`` run on the built-in corpus with the same time budget, the same
seed and the same held-out documents; only the recipe changes (model width and depth, sequence length,
batch size, peak learning rate, dropout, vocabulary size). The table gives each run's held-out MLM and
NSP accuracy against the baselines (always the most frequent token; always the majority label), its
steps and tokens/s; results go to ``benchmarks/results/pretrain_budget-<machine>.{json,png}``.

Two ways to spend the budget:

* ``--mode wallclock`` (default): each variant is a real ``--minutes N`` run. The runs are sequential and
  each owns the machine while it runs: a budgeted run on a loaded machine gets fewer steps, so compare
  variants from one invocation on an otherwise idle machine (the load average before and after each run
  is saved with the results).
* ``--mode calibrated --default-steps N``: for a shared machine. ``N`` is the step count of the default
  recipe in the budget on an idle machine (the ``steps`` of ``--mode wallclock --variants default``).
  Each variant's cost per step is measured in CPU seconds on one thread, which other jobs on the machine
  hardly change, and each variant then trains ``N x cost(default) / cost(variant)`` steps as an exactly
  reproducible ``--steps`` run, evaluated as often as a budgeted run. The training runs give the same
  numbers under any load (``--jobs 2`` runs two at a time). The chosen default is then checked with a
  real ``--minutes`` run on an idle machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile

from concurrent.futures import ThreadPoolExecutor

from _common import print_table, save_figure, save_json

def recipe(base: list[str], *changes: str) -> list[str]:
    """``base``'s options with ``changes`` applied: a flag given again replaces its value in place."""
    options = list(base)
    i = 0
    while i < len(changes):
        flag = changes[i]
        has_value = i + 1 < len(changes) and not changes[i + 1].startswith("--")
        value = [changes[i + 1]] if has_value else []
        if flag in options:
            at = options.index(flag)
            options[at:at + 1 + len(value)] = [flag, *value]
        else:
            options += [flag, *value]
        i += 1 + len(value)
    return options


# name -> extra `minibert pretrain` options. Every variant names its vocabulary and masking rate, so it means
# the same recipe whatever today's defaults are; "{vocab4k}"/"{vocab8k}" train (once) a vocabulary of that
# size on the built-in corpus (the very vocabulary `minibert pretrain` trains and caches for its default).
#
# Round 1 varied the recipe of the first default: 4 layers, 128 tokens throughout, 8,000 tokens, 15% masked.
ROUND1 = ["--layers", "4", "--short-seq-length", "0", "--vocab", "{vocab8k}", "--masked-lm-prob", "0.15"]
# Round 2 varied what round 1 chose: 2 layers, 64 tokens for 90% of the budget then 128, still 8,000 tokens
# and 15% masked. Its result is today's default (`default`: 4,000 tokens, 40% masked).
ROUND2 = ["--vocab", "{vocab8k}", "--masked-lm-prob", "0.15"]
# Round 3 varied round 2's result (4,000 tokens, 40% masked, 64 tokens for 90% of the budget then 128) in the
# short phase: its sequence length and its share of the budget. Its result, round 4's starting point: 32 tokens
# for 80% of the budget, then 128.
ROUND3 = ["--vocab", "{vocab4k}", "--masked-lm-prob", "0.4", "--short-seq-length", "64", "--short-seq-ratio", "0.9"]
# Round 4 varied round 3's result (32 tokens for 80% of the budget, then 128) in its learning-rate schedule:
# BERT's linear decay over the whole run against warm-up, the peak held, and a decay to 0 over the 128-token
# phase (wsd), then the share of that phase. Its result is today's default: wsd, 32 tokens for 60%.
ROUND4 = ["--schedule", "linear", "--short-seq-ratio", "0.8"]
VARIANTS = {
    "default": [],
    # round 1
    "round1": ROUND1,
    "seq64": recipe(ROUND1, "--max-seq-length", "64"),
    "batch32": recipe(ROUND1, "--batch-size", "32"),
    "batch8": recipe(ROUND1, "--batch-size", "8"),
    "lr1e-3": recipe(ROUND1, "--lr", "1e-3"),
    "lr1e-3-warm15": recipe(ROUND1, "--lr", "1e-3", "--warmup-ratio", "0.15"),
    "no-dropout": recipe(ROUND1, "--dropout", "0"),
    "mask25": recipe(ROUND1, "--masked-lm-prob", "0.25"),
    "mask40": recipe(ROUND1, "--masked-lm-prob", "0.4"),
    "2x256": recipe(ROUND1, "--layers", "2"),
    "2x384": recipe(ROUND1, "--layers", "2", "--hidden", "384", "--heads", "6", "--intermediate", "1536"),
    "6x256": recipe(ROUND1, "--layers", "6"),
    "4x192": recipe(ROUND1, "--hidden", "192", "--heads", "3", "--intermediate", "768"),
    "vocab4k": recipe(ROUND1, "--vocab", "{vocab4k}"),
    # BERT's two phases: 90% of the budget on 64-token sequences, then 128 (evaluated at 128 like the default)
    "seq64-128": recipe(ROUND1, "--short-seq-length", "64"),
    # combinations of the single changes that helped
    "seq64-128-nodrop": recipe(ROUND1, "--short-seq-length", "64", "--dropout", "0"),
    "2x256-seq64-128-nodrop": recipe(ROUND1, "--layers", "2", "--short-seq-length", "64", "--dropout", "0"),
    "2x256-seq64-128-nodrop-lr1e-3": recipe(ROUND1, "--layers", "2", "--short-seq-length", "64", "--dropout", "0",
                                            "--lr", "1e-3"),
    "2x256-seq64-128-nodrop-lr2e-3": recipe(ROUND1, "--layers", "2", "--short-seq-length", "64", "--dropout", "0",
                                            "--lr", "2e-3"),
    # round 2
    "round2": ROUND2,
    "r2-lr1e-3": recipe(ROUND2, "--lr", "1e-3"),
    "r2-batch8": recipe(ROUND2, "--batch-size", "8"),
    "r2-2x128": recipe(ROUND2, "--hidden", "128", "--heads", "2", "--intermediate", "512"),
    "r2-mask30": recipe(ROUND2, "--masked-lm-prob", "0.3"),
    "r2-mask40": recipe(ROUND2, "--masked-lm-prob", "0.4"),
    "r2-vocab4k": recipe(ROUND2, "--vocab", "{vocab4k}"),
    "r2-vocab4k-mask30": recipe(ROUND2, "--vocab", "{vocab4k}", "--masked-lm-prob", "0.3"),
    # round 3: the short phase's sequence length, from round 2's result (64 tokens for 90% of the budget)
    "round3": ROUND3,
    "r3-seq32": recipe(ROUND3, "--short-seq-length", "32"),
    "r3-seq32-r80": recipe(ROUND3, "--short-seq-length", "32", "--short-seq-ratio", "0.8"),
    "r3-seq16": recipe(ROUND3, "--short-seq-length", "16"),
    # round 4: the schedule, from round 3's result (linear decay)
    "round4": ROUND4,
    "r4-wsd": ["--schedule", "wsd", "--short-seq-ratio", "0.8"],
    "r4-wsd-r70": ["--schedule", "wsd", "--short-seq-ratio", "0.7"],  # a longer 128-token phase, all of it decay
    "r4-wsd-lr1e-3": ["--schedule", "wsd", "--short-seq-ratio", "0.8", "--lr", "1e-3"],
    "r4-wsd-r60": ["--schedule", "wsd", "--short-seq-ratio", "0.6"],   # today's default
    "r4-wsd-r50": ["--schedule", "wsd", "--short-seq-ratio", "0.5"],
}
ROUND2_VARIANTS = ["default", *(n for n in VARIANTS if n == "round2" or n.startswith("r2-"))]
ROUND3_VARIANTS = [n for n in VARIANTS if n == "round3" or n.startswith("r3-")]
ROUND4_VARIANTS = [n for n in VARIANTS if n == "round4" or n.startswith("r4-")]
VOCABULARIES = {"vocab4k": 4000, "vocab8k": 8000}  # placeholder -> size


# Variants that change only the arithmetic's values, not its amount, run at the speed of another one.
TIMED_AS = {"lr1e-3": "round1", "lr1e-3-warm15": "round1", "no-dropout": "round1",
            "2x256-seq64-128-nodrop-lr2e-3": "2x256-seq64-128-nodrop-lr1e-3", "r2-lr1e-3": "round2",
            "r4-wsd": "round4", "r4-wsd-lr1e-3": "round4"}
CALIBRATION_STEPS = (10, 50)  # a variant's two short timing runs (calibrated mode); their difference is 40 steps


def pretrain(name: str, work: str, seed: int, budget: list[str], tag: str = "", env: dict | None = None) -> dict:
    """Run ``minibert pretrain`` for variant ``name`` with the ``budget`` options; return its summary."""
    out = os.path.join(work, name + tag)
    options = [o.format(**{v: os.path.join(work, v) for v in VOCABULARIES}) for o in VARIANTS[name]]
    subprocess.run([sys.executable, "-m", "minibert", "pretrain", *budget, "--seed", str(seed),
                    "--out", out, "--overwrite", "--quiet", *options], check=True, stdout=subprocess.DEVNULL,
                   env=None if env is None else {**os.environ, **env})
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def cpu_seconds_per_step(name: str, seed: int, work: str) -> float:
    """CPU seconds one training step of ``name`` costs on one thread.

    CPU time, unlike wall time, hardly changes when other jobs share the machine. Two runs that differ only
    in their step count cancel what does not scale with the steps (building the data, the final evaluation
    and checkpoint); one thread keeps idle spinning of a second thread out of the count.
    """
    import resource
    used = []
    for steps in CALIBRATION_STEPS:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pretrain(name, work, seed, ["--steps", str(steps), "--eval-every", "0", "--save-every", "0"],
                 tag="-timing", env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return (used[1] - used[0]) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])


def run_wallclock(name: str, minutes: float, seed: int, work: str) -> dict:
    """One real ``--minutes`` run; the load average around it goes with the results."""
    load_before = os.getloadavg()[0]
    summary = pretrain(name, work, seed, ["--minutes", str(minutes)])
    return row(name, summary, load_before=load_before, load_after=os.getloadavg()[0])


def rounds_in_budget(minutes: float) -> int:
    """Evaluations of a ``--minutes`` run with the default interval: right after the first step, every fifth
    of the budget (at least a minute), and the final one."""
    every = max(1.0, minutes / 5)
    return 2 + max(0, math.ceil(minutes / every) - 1)


def run_calibrated(name: str, steps: int, cpu_step: float, seed: int, work: str, evaluations: int) -> dict:
    """The ``--steps`` run that stands for ``name``'s budget, evaluated as often as a budgeted run."""
    every = max(1, steps // evaluations)
    # One thread each: the step count is fixed, so threads change only the speed, and single-threaded runs
    # side by side waste nothing on threads waiting for each other.
    summary = pretrain(name, work, seed, ["--steps", str(steps), "--eval-every", str(every), "--save-every", "0"],
                       env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return row(name, summary, cpu_seconds_per_step=cpu_step)


def row(name: str, summary: dict, **extra) -> dict:
    return {"variant": name, "options": " ".join(VARIANTS[name]) or "(defaults)",
            "eval_mlm_acc": summary["eval_mlm_acc"], "eval_nsp_acc": summary["eval_nsp_acc"],
            "eval_mlm_acc_hidden": summary.get("eval_mlm_acc_hidden"),  # where the input hides the answer
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"],
            "tokens_per_step": summary["tokens_per_s"] * summary["train_seconds"] / summary["steps"],
            "unigram_baseline_mlm_acc": summary["unigram_baseline_mlm_acc"],
            "nsp_majority_baseline_acc": summary["nsp_majority_baseline_acc"], **extra}


def plot(rows: list[dict], minutes: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["variant"] for r in rows]
    for ax, key, base, title in ((axes[0], "eval_mlm_acc", "unigram_baseline_mlm_acc", "held-out MLM accuracy"),
                                 (axes[1], "eval_nsp_acc", "nsp_majority_baseline_acc", "held-out NSP accuracy")):
        ax.bar(names, [100 * r[key] for r in rows], color="tab:blue")
        ax.axhline(100 * rows[0][base], color="gray", linestyle="--", label="baseline")
        ax.set_title(f"{title} after {minutes:g} min")
        ax.set_ylabel("%")
        ax.tick_params(axis="x", rotation=30)
        ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="budget of every run (default 5)")
    parser.add_argument("--variants", nargs="+", default=ROUND4_VARIANTS, choices=list(VARIANTS),
                        help="variants to train (default: round 4's: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.add_argument("--name", default="pretrain_budget",
                        help="results file name, before -calibrated and the machine (default: %(default)s)")
    parser.add_argument("--mode", choices=("wallclock", "calibrated"), default="wallclock",
                        help="real --minutes runs on an idle machine, or timed --steps runs (see above)")
    parser.add_argument("--default-steps", type=int, default=None,
                        help="calibrated mode: the steps the default recipe completes in the budget on an idle "
                             "machine (the 'steps' of `--mode wallclock --variants default`)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="calibrated mode: training runs at a time, one thread each (default 1)")
    parser.add_argument("--timings", default=None,
                        help="calibrated mode: a JSON file of CPU seconds per step by variant, read if it exists "
                             "and extended with what is measured (default: measure every variant)")
    parser.add_argument("--work", default=None,
                        help="keep every variant's run folder (checkpoint, metrics, summary) under this folder "
                             "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    if args.mode == "calibrated" and (args.default_steps is None or args.default_steps < 1):
        parser.error("--mode calibrated needs --default-steps N (measure it with --mode wallclock --variants "
                     "default on an idle machine)")
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    work_dir = (contextlib.nullcontext(args.work) if args.work
                else tempfile.TemporaryDirectory(prefix="minibert-budget-"))
    with work_dir as work:
        used = " ".join(o for n in {"default", *args.variants} for o in VARIANTS[n])
        for placeholder, size in VOCABULARIES.items():
            if "{" + placeholder + "}" in used:
                subprocess.run([sys.executable, "-m", "minibert", "train-vocab", "--vocab-size", str(size), "--out",
                                os.path.join(work, placeholder)], check=True, stdout=subprocess.DEVNULL)

        def report(r: dict) -> dict:
            print(f"{r['variant']}: held-out MLM {r['eval_mlm_acc']:.3f}, NSP {r['eval_nsp_acc']:.3f}, "
                  f"{r['steps']} steps", flush=True)
            return r

        if args.mode == "wallclock":
            rows = [report(run_wallclock(name, args.minutes, args.seed, work)) for name in args.variants]
        else:
            cpu = {}
            if args.timings and os.path.exists(args.timings):  # an earlier invocation's timings
                with open(args.timings, encoding="utf-8") as f:
                    cpu = json.load(f)
            for timed in dict.fromkeys(TIMED_AS.get(n, n) for n in ["default", *args.variants]):
                if timed not in cpu:
                    cpu[timed] = cpu_seconds_per_step(timed, args.seed, work)
                    if args.timings:
                        with open(args.timings, "w", encoding="utf-8") as f:
                            json.dump(cpu, f, indent=1)
                print(f"{timed}: {cpu[timed]:.3f} CPU s/step", flush=True)
            # The default recipe's idle step count, scaled by each variant's relative cost per step.
            steps = {n: max(1, round(args.default_steps * cpu["default"] / cpu[TIMED_AS.get(n, n)]))
                     for n in args.variants}
            evaluations = rounds_in_budget(args.minutes) - 1
            with ThreadPoolExecutor(args.jobs) as pool:
                rows = list(pool.map(lambda n: report(run_calibrated(n, steps[n], cpu[TIMED_AS.get(n, n)], args.seed,
                                                                     work, evaluations)), args.variants))
    columns = ["variant", "options", "eval_mlm_acc", "eval_nsp_acc", "steps"]
    columns.append("tokens_per_s" if args.mode == "wallclock" else "cpu_seconds_per_step")
    print_table(rows, columns, {"eval_mlm_acc": ".3f", "eval_nsp_acc": ".3f", "tokens_per_s": ".0f",
                                "cpu_seconds_per_step": ".3f"})
    name = args.name
    if args.mode == "calibrated":
        name += "-calibrated"
    print("saved", save_json(name, {"minutes": args.minutes, "seed": args.seed, "mode": args.mode,
                                    "default_steps": args.default_steps, "rows": rows}),
          save_figure(plot(rows, args.minutes), name))


if __name__ == "__main__":
    main()
