"""What a pretraining run leaves behind for people: metrics.jsonl, curves.png and the printed summary.

``metrics.jsonl`` gets one JSON line per optimizer step (``"split": "train"``) and per evaluation
(``"split": "eval"``); ``curves.png`` plots them; the summary compares the final accuracies with the
baselines a model that learned nothing from context would reach.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minibert.files import atomic_open

def read_metrics(path: str, up_to_step: int) -> list[dict]:
    """Rows of a previous run's metrics.jsonl with step <= ``up_to_step`` (a torn last line is skipped)."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line an interrupted run was writing
                if row.get("step", 0) <= up_to_step:
                    rows.append(row)
    return rows


def append_metrics(path: str, row: dict) -> None:
    """Append one row as a JSON line."""
    # One short line per append: it reaches the file whole or (on a crash mid-write) is skipped on read.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def save_curves(rows: list[dict], path: str, baseline: float | None) -> None:
    """Plot training (smoothed) and evaluation loss, MLM and NSP accuracy against the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(axes, ("loss", "mlm_acc", "nsp_acc"), ("loss (MLM + NSP)", "MLM accuracy",
                                                                      "NSP accuracy")):
        if train:
            steps = np.array([r["step"] for r in train])
            values = np.array([r[key] for r in train])
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, label="train" + (f" ({window}-step mean)" if window > 1 else ""))
        if evals:
            ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label="held-out")
        if key == "mlm_acc" and baseline is not None:
            ax.axhline(baseline, color="gray", linestyle="--", label="unigram baseline")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def print_summary(summary: dict) -> None:
    """Print the end-of-run figures, the baselines beside the model's accuracies."""
    print(f"\npretraining finished: {summary['steps']} steps in {summary['seconds'] / 60:.1f} min "
          f"({summary['tokens_per_s']:.0f} tokens/s)")
    print(f"  final train loss {summary['train_loss']:.3f}   MLM acc {summary['train_mlm_acc']:.3f}   "
          f"NSP acc {summary['train_nsp_acc']:.3f}   (mean of the last {summary['final_window']} steps)")
    if summary.get("eval_loss") is not None:
        print(f"  held-out   loss {summary['eval_loss']:.3f}   MLM acc {summary['eval_mlm_acc']:.3f}   "
              f"NSP acc {summary['eval_nsp_acc']:.3f}")
    print(f"  baselines: MLM acc {summary['unigram_baseline_mlm_acc']:.3f} always predicting "
          f"{summary['unigram_token']!r} (unigram), NSP acc {summary['nsp_majority_baseline_acc']:.3f} "
          f"always guessing the majority label")
    print(f"  checkpoint: {summary['checkpoint']}")
