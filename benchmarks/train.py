"""Training-step speed: the NumPy reference against PyTorch eager, same config, weights and batch.

    python benchmarks/train.py            # prints a table, saves benchmarks/results/train-<machine>.{json,png}

One step = forward with dropout + MLM/NSP loss + backward + AdamW update, float32. Before timing, the two
implementations are checked to compute the same loss on the same weights (dropout off), so the table
compares equal work. Torch eager is ``transformers.BertForPreTraining`` with ``attn_implementation="eager"``
(minibert's own torch model is a row to add). Every ratio is measured inside this one run.

Both sides get the same number of CPU threads: ``MINIBERT_BENCH_THREADS`` (default 1) for NumPy's BLAS and
for torch. One thread each is the fair and stable setting on a shared machine, where oversubscribed
threads slowed small torch ops twenty-fold in our runs.
"""
from __future__ import annotations

import os

THREADS = int(os.environ.get("MINIBERT_BENCH_THREADS", "1"))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # must be set before NumPy loads its BLAS

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from _common import print_table, save_figure, save_json, time_fn  # noqa: E402

from minibert.config import BertConfig  # noqa: E402
from minibert.reference.model import BertForPreTraining  # noqa: E402
from minibert.reference.optim import AdamW  # noqa: E402
from minibert.reference.train import pretraining_step  # noqa: E402

# Small enough that the NumPy reference takes about a second per step or less on one core.
CONFIGS = {
    "tiny (E=64, L=2, S=64)": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=256, seq=64),
    "small (E=128, L=2, S=128)": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=512, seq=128),
    "medium (E=256, L=4, S=128)": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=1024, seq=128),
}
VOCAB, BATCH, LR = 2000, 8, 1e-4


def make_batch(gen, seq):
    """Random ids with 15% of positions predicted, a padded tail on half the rows, random NSP labels."""
    ids = gen.integers(5, VOCAB, (BATCH, seq))
    mask = np.ones((BATCH, seq), dtype=np.int64)
    mask[::2, seq * 3 // 4:] = 0
    labels = np.where((gen.random((BATCH, seq)) < 0.15) & (mask == 1), ids, -100)
    labels[:, 1] = ids[:, 1]  # at least one prediction per row
    tt = (np.arange(seq)[None] >= seq // 2).astype(np.int64).repeat(BATCH, 0)
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "labels": labels,
            "next_sentence_label": gen.integers(0, 2, BATCH)}


def torch_step_fn(model, batch):
    """Closure running one HF training step (AdamW) on ``batch``."""
    import torch
    tb = {k: torch.as_tensor(v) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**tb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def bench_config(name, spec, repeats):
    import torch
    import transformers
    seq = spec.pop("seq")
    cfg = BertConfig(vocab_size=VOCAB, max_position_embeddings=seq, **spec)
    gen = np.random.default_rng(0)
    batch = make_batch(gen, seq)
    ours = BertForPreTraining(cfg, dtype=np.float32, seed=0)
    with tempfile.TemporaryDirectory() as d:  # the same weights on both sides, through a checkpoint
        ours.save_pretrained(d)
        hf = transformers.BertForPreTraining.from_pretrained(d, attn_implementation="eager")

    # Validate before timing: same loss on the same weights and batch, dropout off.
    ref_loss = float(ours.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                  batch["labels"], batch["next_sentence_label"])["loss"])
    with torch.no_grad():
        hf_loss = hf.eval()(**{k: torch.as_tensor(v) for k, v in batch.items()}).loss.item()
    assert abs(ref_loss - hf_loss) < 1e-4, (ref_loss, hf_loss)
    hf.train()

    optimizer = AdamW(ours.params, lr=LR, weight_decay=0.01)
    counter = iter(range(10 ** 9))
    ref_step = lambda: pretraining_step(ours, optimizer, batch, LR, dropout_seed=next(counter))  # noqa: E731
    torch_step = torch_step_fn(hf, batch)
    ref_step(), torch_step(), torch_step()  # warm-up
    # Interleave the two so that load from other processes on this shared machine hits both alike.
    samples = {"ref": [], "torch": []}
    for _ in range(repeats):
        samples["ref"] += time_fn(ref_step, warmup=0, repeats=1)["samples_s"]
        samples["torch"] += time_fn(torch_step, warmup=0, repeats=1)["samples_s"]
    t_ref, t_torch = ({"median_s": statistics.median(s), "samples_s": s} for s in samples.values())
    tokens = BATCH * seq
    rows = []
    for impl, t in (("numpy reference", t_ref), ("torch eager (HF)", t_torch)):
        rows.append({"config": name, "impl": impl, "ms_per_step": 1e3 * t["median_s"],
                     "tokens_per_s": tokens / t["median_s"],
                     "slowdown_vs_torch": t["median_s"] / t_torch["median_s"],
                     "samples_s": t["samples_s"]})
    return rows, {"loss_numpy": ref_loss, "loss_torch": hf_loss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="NumPy reference vs torch eager training-step time")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(THREADS)
    rows, checks = [], {}
    for name, spec in CONFIGS.items():
        r, c = bench_config(name, dict(spec), args.repeats)
        rows += r
        checks[name] = c
    print(f"batch {BATCH}, vocab {VOCAB}, float32, dropout on, AdamW; "
          f"{THREADS} thread(s) for NumPy's BLAS and for torch")
    print_table(rows, ["config", "impl", "ms_per_step", "tokens_per_s", "slowdown_vs_torch"],
                {"ms_per_step": ".1f", "tokens_per_s": ".0f", "slowdown_vs_torch": ".2f"})
    path = save_json("train", {"threads": THREADS, "batch": BATCH, "vocab": VOCAB, "dtype": "float32",
                               "configs": CONFIGS, "loss_check": checks, "rows": rows})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(CONFIGS)
    width = 0.38
    for i, impl in enumerate(("numpy reference", "torch eager (HF)")):
        vals = [next(r["tokens_per_s"] for r in rows if r["config"] == n and r["impl"] == impl) for n in names]
        ax.bar(np.arange(len(names)) + (i - 0.5) * width, vals, width, label=impl)
    ax.set_xticks(np.arange(len(names)), [n.replace(" (", "\n(") for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("tokens / s (higher is better)")
    ax.set_title(f"BERT training step (fwd+bwd+AdamW), batch {BATCH}, float32, {THREADS} thread(s)")
    ax.legend()
    print("saved", path, save_figure(fig, "train"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
