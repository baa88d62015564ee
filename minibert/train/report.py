"""What a pretraining run shows people: the progress bar, metrics rows, curves.png and the summary.

``metrics.jsonl`` gets one JSON line per optimizer step (``"split": "train"``) and per evaluation
(``"split": "eval"``); ``curves.png`` plots them; the summary compares the final accuracies with the
baselines a model that learned nothing from context would reach.
"""
from __future__ import annotations

import numpy as np

from minibert.files import atomic_open

FINAL_WINDOW = 20  # the summary's "final train loss" averages the last this-many steps


def metrics(stats: dict) -> dict:
    """Per-token / per-example averages from summed statistics."""
    mlm_loss = stats["mlm_loss_sum"] / max(stats["n_masked"], 1)
    nsp_loss = stats["nsp_loss_sum"] / max(stats["n_examples"], 1)
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_acc": stats["mlm_correct"] / max(stats["n_masked"], 1),
            # at the predicted positions whose input hides the answer ([MASK] or a random token): what the
            # model reads from the context, without the kept tokens it can copy
            "mlm_acc_hidden": stats["mlm_hidden_correct"] / max(stats["n_hidden"], 1),
            "nsp_acc": stats["nsp_correct"] / max(stats["n_examples"], 1)}


def train_row(step_done: int, stats: dict, lr: float, grad_norm: float, seconds: float, elapsed: float) -> dict:
    """The metrics line of one training step: ``lr`` it used, ``elapsed`` seconds of the run at its end."""
    return {"split": "train", "step": step_done, **metrics(stats), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": stats["n_tokens"] / seconds if seconds > 0 else 0.0, "elapsed": elapsed}


class Progress:
    """The progress bar: loss, MLM / NSP accuracy and tokens/s, each an exponential moving average, the
    learning rate, and for a time budget the minutes left (``total`` is None: no step count is planned)."""

    def __init__(self, total: int | None, initial: int, enabled: bool):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, mininterval=1.0,
                        desc="pretrain")
        self.smooth: dict = {}

    def update(self, row: dict, plan) -> None:
        """Advance one step, showing ``row``'s figures smoothed."""
        for k in ("loss", "mlm_acc", "nsp_acc", "tokens_per_s"):
            self.smooth[k] = row[k] if k not in self.smooth else 0.9 * self.smooth[k] + 0.1 * row[k]
        extra = {}
        if getattr(plan, "seconds", None):
            extra["left"] = f"{max(0.0, plan.seconds - row['elapsed']) / 60:.1f}min"
        self.bar.set_postfix(loss=f"{self.smooth['loss']:.3f}", mlm=f"{self.smooth['mlm_acc']:.3f}",
                             nsp=f"{self.smooth['nsp_acc']:.3f}", tok_s=f"{self.smooth['tokens_per_s']:.0f}",
                             lr=f"{row['lr']:.2e}", **extra, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summarize(rows: list[dict], final_eval: dict | None, timing: dict, facts: dict) -> dict:
    """The end-of-run figures: ``timing``, the mean of the last :data:`FINAL_WINDOW` training steps, the
    final evaluation, then ``facts`` (baselines, checkpoint, run shape)."""
    last = [r for r in rows if r["split"] == "train"][-FINAL_WINDOW:]
    return {
        **timing, "final_window": len(last),
        "train_loss": float(np.mean([r["loss"] for r in last])),
        "train_mlm_acc": float(np.mean([r["mlm_acc"] for r in last])),
        "train_nsp_acc": float(np.mean([r["nsp_acc"] for r in last])),
        "eval_loss": final_eval["loss"] if final_eval else None,
        "eval_mlm_acc": final_eval["mlm_acc"] if final_eval else None,
        "eval_mlm_acc_hidden": final_eval["mlm_acc_hidden"] if final_eval else None,
        "eval_nsp_acc": final_eval["nsp_acc"] if final_eval else None,
        **facts,
    }

def save_curves(rows: list[dict], path: str, baseline: float | None) -> None:
    """Plot training (smoothed) and evaluation loss, MLM and NSP accuracy against the step (MLM also where
    the input hides the answer: without the kept tokens a model can copy)."""
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
        if key == "mlm_acc" and evals and all("mlm_acc_hidden" in r for r in evals):
            ax.plot([r["step"] for r in evals], [r["mlm_acc_hidden"] for r in evals], "s--",
                    label="held-out, answer hidden")
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
    """Print the end-of-run figures, the baselines beside the model's accuracies, and a few fill-mask examples."""
    print(f"\npretraining finished: {summary['steps']} steps in {summary['seconds'] / 60:.2f} min "
          f"({summary['tokens_per_s']:.0f} tokens/s); {summary['stopped']}")
    print(f"  final train loss {summary['train_loss']:.3f}   MLM acc {summary['train_mlm_acc']:.3f}   "
          f"NSP acc {summary['train_nsp_acc']:.3f}   (mean of the last {summary['final_window']} steps)")
    if summary.get("eval_loss") is not None:
        print(f"  held-out   loss {summary['eval_loss']:.3f}   MLM acc {summary['eval_mlm_acc']:.3f}   "
              f"NSP acc {summary['eval_nsp_acc']:.3f}")
        print(f"             MLM acc {summary['eval_mlm_acc_hidden']:.3f} where the input hides the answer "
              f"([MASK] or a random token; the other 10% are the token itself, to copy)")
    print(f"  baselines: MLM acc {summary['unigram_baseline_mlm_acc']:.3f} always predicting "
          f"{summary['unigram_token']!r} (unigram), NSP acc {summary['nsp_majority_baseline_acc']:.3f} "
          f"always guessing the majority label")
    print(f"  checkpoint: {summary['checkpoint']}")
    if summary.get("examples"):
        print(f"  fill-mask on held-out sentences (top {len(summary['examples'][0]['top'])}, * = the word "
              f"that was there):")
        for example in summary["examples"]:
            shown = "  ".join(f"{'*' if token == example['answer'] else ''}{token} {p:.1%}"
                              for token, p in example["top"])
            hit = "" if any(t == example["answer"] for t, _ in example["top"]) else f"   (* {example['answer']})"
            print(f"    {example['text']}\n      -> {shown}{hit}")


EXAMPLES = 4  # held-out sentences shown with the model's fill-mask guesses at the end of a run


def fill_mask_examples(checkpoint_dir: str, sentences: list[str], top_k: int = 5) -> list[dict]:
    """The checkpoint's top-``top_k`` guesses for a masked word in a few held-out ``sentences``."""
    if not sentences:
        return []
    from minibert import fill_mask

    model, tokenizer = fill_mask.load(checkpoint_dir)
    examples = []
    for text, answer in fill_mask.cloze(sentences, tokenizer, EXAMPLES):
        (top,) = fill_mask.fill_mask(model, tokenizer, text, top_k)
        examples.append({"text": text, "answer": answer, "top": top})
    return examples
