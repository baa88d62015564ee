"""What a pretrained model has learned, seen through its held-out MLM accuracy.

    python benchmarks/mlm_diagnosis.py --model runs/pretrain     # after `minibert pretrain`

The held-out MLM accuracy of ``minibert pretrain`` mixes three kinds of question (BERT's 80/10/10 rule):
at 80% of the predicted positions the model sees ``[MASK]`` and must use the context; at 10% it sees a
random token; at 10% it sees the right token and only has to copy it. A small model learns to copy long
before it learns to read its context, so this script splits the accuracy by kind. It also shows where the
attention heads look (the mean weight a head puts on the tokens 1 and 2 positions away, against the
``1/length`` of uniform attention) and what the context could give: a count-based oracle that predicts a
``[MASK]`` from its neighbours in the training documents (the most frequent token after the previous
token, before the next one, or between both), and the accuracy by position in the sequence (the default
trains most of its steps on 32-token sequences, and only its last phase reaches position 127). Same
held-out questions as ``minibert pretrain``'s
evaluation (same documents, seed and 15% masks). Results: ``benchmarks/results/mlm_diagnosis-<machine>.{json,png}``.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np
import torch
from _common import save_figure, save_json

from minibert.modeling import BertForPreTraining
from minibert.tokenizer import BertTokenizer
from minibert.train import pretrain_args, state
from minibert.train.data import prepare_data, read_split

OFFSETS = (-2, -1, 1, 2)
POSITION_BINS = (0, 8, 16, 32, 48, 64, 96, 128)  # [start, end) ranges of positions


def accuracy_by_kind(model, batches: list[dict], mask_id: int) -> dict:
    """MLM accuracy at the predicted positions that show [MASK], a random token, or the token itself."""
    counts = {kind: [0, 0] for kind in ("mask", "random", "kept")}
    with torch.no_grad():
        for b in batches:
            out = model(input_ids=torch.as_tensor(b["input_ids"]), token_type_ids=torch.as_tensor(b["token_type_ids"]),
                        attention_mask=torch.as_tensor(b["attention_mask"]))
            predicted = out.prediction_logits.argmax(-1).numpy()
            labels, shown = b["labels"], b["input_ids"]
            asked = labels != -100
            for kind, where in (("mask", shown == mask_id), ("kept", shown == labels),
                                ("random", (shown != mask_id) & (shown != labels))):
                sel = asked & where
                counts[kind][0] += int((predicted[sel] == labels[sel]).sum())
                counts[kind][1] += int(sel.sum())
    return {kind: {"accuracy": right / max(n, 1), "count": n} for kind, (right, n) in counts.items()}


def accuracy_by_position(model, batches: list[dict]) -> list[dict]:
    """Held-out MLM accuracy of the predicted positions in each range of POSITION_BINS (all kinds together)."""
    right, count = np.zeros(len(POSITION_BINS) - 1), np.zeros(len(POSITION_BINS) - 1)
    with torch.no_grad():
        for b in batches:
            out = model(input_ids=torch.as_tensor(b["input_ids"]), token_type_ids=torch.as_tensor(b["token_type_ids"]),
                        attention_mask=torch.as_tensor(b["attention_mask"]))
            predicted = out.prediction_logits.argmax(-1).numpy()
            rows, cols = np.nonzero(b["labels"] != -100)
            where = np.searchsorted(POSITION_BINS, cols, side="right") - 1   # the range of each position
            np.add.at(right, where, predicted[rows, cols] == b["labels"][rows, cols])
            np.add.at(count, where, 1)
    return [{"positions": f"{lo}-{hi - 1}", "accuracy": r / max(n, 1), "count": int(n)}
            for lo, hi, r, n in zip(POSITION_BINS, POSITION_BINS[1:], right, count) if n]


def attention_by_offset(model, batch: dict) -> list[dict]:
    """Per layer and head: the mean attention weight on the key ``offset`` positions away, and 1/length."""
    config = model.config
    captured = {}
    hooks = []
    for i, layer in enumerate(model.bert.encoder.layer):
        for name in ("query", "key"):
            hooks.append(getattr(layer.attention.self, name).register_forward_hook(
                lambda module, args, out, key=(i, name): captured.__setitem__(key, out)))
    ids = torch.as_tensor(batch["input_ids"])
    keep = torch.as_tensor(batch["attention_mask"]).bool()                  # [B, S]
    with torch.no_grad():
        model(input_ids=ids, token_type_ids=torch.as_tensor(batch["token_type_ids"]), attention_mask=keep.long())
    for h in hooks:
        h.remove()
    heads, size = config.num_attention_heads, config.head_dim
    batch_size, seq = ids.shape
    rows = []
    for i in range(config.num_hidden_layers):
        q, k = (captured[(i, n)].view(batch_size, seq, heads, size).transpose(1, 2) for n in ("query", "key"))
        scores = (q @ k.transpose(-1, -2)) * size ** -0.5                     # [B, H, S, S]
        probs = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
        positions = torch.arange(seq)
        for h in range(heads):
            row = {"layer": i, "head": h, "uniform": float((1.0 / keep.sum(-1).float()).mean())}
            for offset in OFFSETS:
                j = positions + offset
                ok = (j >= 0) & (j < seq)
                weights = probs[:, h, positions[ok], j[ok]]                  # [B, n]
                valid = keep[:, positions[ok]] & keep[:, j[ok]]
                row[f"offset{offset:+d}"] = float(weights[valid].mean())
            rows.append(row)
    return rows


def neighbour_oracle(train_docs, tokenizer, batches: list[dict], mask_id: int) -> dict:
    """Accuracy at the [MASK] positions of the most frequent training token given its neighbours."""
    after, before, between = (collections.defaultdict(collections.Counter) for _ in range(3))
    for doc in train_docs:
        for sentence in doc:
            ids = [-1, *tokenizer.convert_tokens_to_ids(tokenizer.tokenize(sentence)), -2]  # -1/-2: the edges
            for i in range(1, len(ids) - 1):
                after[ids[i - 1]][ids[i]] += 1
                before[ids[i + 1]][ids[i]] += 1
                between[(ids[i - 1], ids[i + 1])][ids[i]] += 1
    special = set(tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"]))
    hits, total = collections.Counter(), 0
    for b in batches:
        shown, labels = b["input_ids"], b["labels"]
        for r, c in zip(*np.nonzero((labels != -100) & (shown == mask_id))):
            total += 1
            prev = -1 if shown[r, c - 1] in special else int(shown[r, c - 1])
            nxt = -2 if c + 1 == shown.shape[1] or shown[r, c + 1] in special else int(shown[r, c + 1])
            guesses = {"previous token": after.get(prev), "next token": before.get(nxt),
                       "both neighbours": between.get((prev, nxt)) or after.get(prev)}
            for name, table in guesses.items():
                hits[name] += bool(table) and table.most_common(1)[0][0] == labels[r, c]
    return {name: hits[name] / max(total, 1) for name in ("previous token", "next token", "both neighbours")}


def plot(result: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    kinds = result["accuracy_by_kind"]
    names = ["[MASK]", "random", "kept", *result["neighbour_oracle"]]
    values = [kinds["mask"]["accuracy"], kinds["random"]["accuracy"], kinds["kept"]["accuracy"],
              *result["neighbour_oracle"].values()]
    axes[0].bar(names, [100 * v for v in values], color=["tab:blue"] * 3 + ["tab:gray"] * 3)
    axes[0].axhline(100 * result["unigram_baseline_mlm_acc"], color="black", linestyle="--", label="unigram")
    axes[0].set_title("held-out MLM accuracy by what the model saw (blue)\nand neighbour-count oracles at [MASK] (gray)")
    axes[0].set_ylabel("%")
    axes[0].tick_params(axis="x", rotation=30)
    axes[0].legend()
    heads = result["attention"]
    labels = [f"L{r['layer']}H{r['head']}" for r in heads]
    for offset in OFFSETS:
        axes[1].plot(labels, [r[f"offset{offset:+d}"] for r in heads], marker="o", label=f"offset {offset:+d}")
    axes[1].plot(labels, [r["uniform"] for r in heads], color="black", linestyle="--", label="uniform")
    axes[1].set_title("mean attention weight on nearby tokens")
    axes[1].legend()
    positions = result["accuracy_by_position"]
    axes[2].bar([r["positions"] for r in positions], [100 * r["accuracy"] for r in positions], color="tab:blue")
    axes[2].set_title("held-out MLM accuracy by position in the sequence")
    axes[2].set_ylabel("%")
    axes[2].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/pretrain", help="a pretraining run folder or checkpoint")
    parser.add_argument("--name", default="mlm_diagnosis", help="results file name (default: %(default)s)")
    args, rest = parser.parse_known_args(argv)
    directory = state.model_directory(args.model)
    # The held-out questions exactly as `minibert pretrain` asked them: pass its data options after these.
    run = pretrain_args.build_parser().parse_args(["--vocab", directory, *rest])
    pretrain_args.check_args(run, 1)
    tokenizer = BertTokenizer.from_pretrained(directory)
    model = BertForPreTraining.from_pretrained(directory).eval()
    data = prepare_data(run, tokenizer, model.config)
    if not data.eval_batches:
        raise SystemExit("no held-out documents to diagnose on (--held-out-every 0?)")
    mask_id = tokenizer.convert_tokens_to_ids(["[MASK]"])[0]
    train_docs, _ = read_split(run.corpus, run.held_out_every)
    result = {"model": args.model, "accuracy_by_kind": accuracy_by_kind(model, data.eval_batches, mask_id),
              "unigram_baseline_mlm_acc": data.unigram_accuracy,
              "neighbour_oracle": neighbour_oracle(train_docs, tokenizer, data.eval_batches, mask_id),
              "attention": attention_by_offset(model, data.eval_batches[0]),
              "accuracy_by_position": accuracy_by_position(model, data.eval_batches)}
    kinds = result["accuracy_by_kind"]
    print(f"held-out MLM accuracy by what the model saw at the predicted position ({args.model}):")
    for kind, label in (("mask", "[MASK] (80%: read the context)"), ("random", "a random token (10%)"),
                        ("kept", "the token itself (10%: copy it)")):
        print(f"  {label:34} {100 * kinds[kind]['accuracy']:5.1f}%  of {kinds[kind]['count']:,}")
    print(f"  unigram baseline (always {tokenizer.convert_ids_to_tokens([data.unigram_token])[0]!r})"
          f"{'':12}{100 * data.unigram_accuracy:5.1f}%")
    print("what the neighbours could give at [MASK] (most frequent training token given them):")
    for name, value in result["neighbour_oracle"].items():
        print(f"  {name:34} {100 * value:5.1f}%")
    print("mean attention weight on the tokens at offsets " + " ".join(f"{o:+d}" for o in OFFSETS)
          + " (uniform: 1/length):")
    for r in result["attention"]:
        print(f"  layer {r['layer']} head {r['head']}: " + " ".join(f"{r[f'offset{o:+d}']:.3f}" for o in OFFSETS)
              + f"   uniform {r['uniform']:.3f}")
    print("held-out MLM accuracy by position in the sequence:")
    for r in result["accuracy_by_position"]:
        print(f"  positions {r['positions']:8} {100 * r['accuracy']:5.1f}%  of {r['count']:,}")
    print("saved", save_json(args.name, result), save_figure(plot(result), args.name))


if __name__ == "__main__":
    main()
