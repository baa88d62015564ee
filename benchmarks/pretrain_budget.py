"""What to pretrain in a fixed wall-clock budget: recipe variants of ``minibert pretrain --minutes N``.

    python benchmarks/pretrain_budget.py                       # every variant, 5 minutes each
    python benchmarks/pretrain_budget.py --minutes 2 --variants default seq64 lr1e-3

Each variant is one ``minibert pretrain`` run on the built-in corpus with the same time budget, the same
seed and the same held-out documents; only the recipe changes (model width and depth, sequence length,
batch size, peak learning rate, dropout, vocabulary size). The table gives each run's held-out MLM and
NSP accuracy against the baselines (always the most frequent token; always the majority label), its
steps and tokens/s; results go to ``benchmarks/results/pretrain_budget-<machine>.{json,png}``.

The runs are sequential and each owns the machine while it runs: a budgeted run on a loaded machine gets
fewer steps, so compare variants from one invocation on an otherwise idle machine (the load average
before and after each run is saved with the results).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _common import print_table, save_figure, save_json

# name -> extra `minibert pretrain` options. "vocab4k" trains (once) a 4,000-token vocabulary first.
VARIANTS = {
    "default": [],
    "seq64": ["--max-seq-length", "64"],
    "batch32": ["--batch-size", "32"],
    "lr1e-3": ["--lr", "1e-3"],
    "no-dropout": ["--dropout", "0"],
    "2x384": ["--layers", "2", "--hidden", "384", "--heads", "6", "--intermediate", "1536"],
    "6x256": ["--layers", "6"],
    "vocab4k": ["--vocab", "{vocab4k}"],
}


def run_variant(name: str, minutes: float, seed: int, work: str) -> dict:
    """One budgeted pretraining run; returns its summary's numbers."""
    out = os.path.join(work, name)
    options = [o.format(vocab4k=os.path.join(work, "vocab4k")) for o in VARIANTS[name]]
    load_before = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "minibert", "pretrain", "--minutes", str(minutes), "--seed", str(seed),
                    "--out", out, "--overwrite", "--quiet", *options], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {"variant": name, "options": " ".join(VARIANTS[name]) or "(defaults)",
            "eval_mlm_acc": summary["eval_mlm_acc"], "eval_nsp_acc": summary["eval_nsp_acc"],
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"],
            "unigram_baseline_mlm_acc": summary["unigram_baseline_mlm_acc"],
            "nsp_majority_baseline_acc": summary["nsp_majority_baseline_acc"],
            "load_before": load_before, "load_after": os.getloadavg()[0]}


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
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="minibert-budget-") as work:
        if "vocab4k" in args.variants:
            subprocess.run([sys.executable, "-m", "minibert", "train-vocab", "--vocab-size", "4000", "--out",
                            os.path.join(work, "vocab4k")], check=True, stdout=subprocess.DEVNULL)
        rows = []
        for name in args.variants:
            rows.append(run_variant(name, args.minutes, args.seed, work))
            print(f"{name}: held-out MLM {rows[-1]['eval_mlm_acc']:.3f}, NSP {rows[-1]['eval_nsp_acc']:.3f}, "
                  f"{rows[-1]['steps']} steps", flush=True)
    print_table(rows, ["variant", "options", "eval_mlm_acc", "eval_nsp_acc", "steps", "tokens_per_s"],
                {"eval_mlm_acc": ".3f", "eval_nsp_acc": ".3f", "tokens_per_s": ".0f"})
    name = "pretrain_budget"
    print("saved", save_json(name, {"minutes": args.minutes, "seed": args.seed, "rows": rows}),
          save_figure(plot(rows, args.minutes), name))


if __name__ == "__main__":
    main()
