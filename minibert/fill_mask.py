"""``minibert fill-mask``: ask a pretrained BERT what belongs where the ``[MASK]`` is.

This is the masked-LM task the model was pretrained on, asked directly: the text is tokenized, every
``[MASK]`` stays a single ``[MASK]`` token, and the MLM head's softmax at each masked position is the
model's belief about the missing word piece. Try it on a run of ``minibert pretrain``::

    python -m minibert fill-mask --model runs/pretrain "The [MASK] statement exits a loop."

``--model`` takes a run folder (its ``best/``, else its ``last/`` checkpoint) or a checkpoint folder,
as every command does (``minibert.train.state.model_directory``).

``--held-out`` asks the question on text the model never saw: every sentence of the documents a
``minibert pretrain`` run held out for evaluation becomes one cloze prompt (:func:`cloze`), and the
command counts how often the masked word is the model's first guess and how often it is in its top k::

    python -m minibert fill-mask --model runs/pretrain --held-out --json held_out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

MASK = "[MASK]"


def cloze(sentences: list[str], tokenizer, n: int | None = None) -> list[tuple[str, str]]:
    """Up to ``n`` (all when None) pairs (sentence with one ``[MASK]``, the word masked), deterministically.

    The masked word is the one nearest the middle that the vocabulary holds whole (a single word piece),
    is alphabetic and has at least four letters: a content word the model could know, not a fragment.
    Sentences of fewer than 6 or more than 24 words give no prompt.
    """
    chosen = []
    for sentence in sentences:
        if n is not None and len(chosen) == n:
            break
        words = sentence.split()
        if not 6 <= len(words) <= 24:
            continue
        middle = len(words) / 2
        for i in sorted(range(1, len(words) - 1), key=lambda i: abs(i - middle)):
            word = words[i]
            pieces = tokenizer.tokenize(word) if word.isalpha() and len(word) >= 4 else []
            if len(pieces) == 1 and pieces[0].lower() == word.lower():
                chosen.append((" ".join(words[:i] + [MASK] + words[i + 1:]), pieces[0]))
                break
    return chosen


def held_out_sentences(model_dir: str) -> list[str]:
    """Every sentence of the documents that the ``minibert pretrain`` run of ``model_dir`` held out, except
    those that also occur in a training document.

    The checkpoint's ``trainer_state.pt`` names the corpus and ``--held-out-every``, and the split is a
    pure function of those, so these are exactly the documents the run never trained on.
    """
    from minibert.train import state
    from minibert.train.data import read_split

    if not os.path.isfile(os.path.join(model_dir, state.TRAINER_STATE)):
        raise ValueError(f"--held-out needs a checkpoint of `minibert pretrain`: {model_dir} has no "
                         f"{state.TRAINER_STATE}, so nothing says which documents were held out")
    args = state.load_trainer_state(model_dir).get("args", {})
    if args.get("shards") or not args.get("held_out_every") or not args.get("corpus"):
        raise ValueError(f"--held-out: the run of {model_dir} held out no documents (it trained on shards or "
                         f"with --held-out-every 0)")
    trained, held_out = read_split(args["corpus"], args["held_out_every"])
    # A sentence can occur in several documents (boilerplate such as "See also ..."): keep only those the
    # model never trained on anywhere, each once.
    seen = {sentence for document in trained for sentence in document}
    return list(dict.fromkeys(s for document in held_out for s in document if s not in seen))


def score_held_out(model, tokenizer, prompts: list[tuple[str, str]], top_k: int = 5) -> dict:
    """How often the masked word of each ``(prompt, word)`` is the first guess / in the top ``top_k``."""
    rows = []
    predictions = fill_mask_batch(model, tokenizer, [text for text, _ in prompts], top_k)
    for (text, answer), (top,) in zip(prompts, predictions):
        rank = next((r for r, (token, _) in enumerate(top, 1) if token == answer), None)
        rows.append({"text": text, "answer": answer, "rank": rank, "top": [[t, round(p, 6)] for t, p in top]})
    n = len(rows)
    hits_1 = sum(r["rank"] == 1 for r in rows)
    hits_k = sum(r["rank"] is not None for r in rows)
    return {"prompts": n, "top_k": top_k, "top1": hits_1, f"top{top_k}_hits": hits_k,
            "top1_rate": hits_1 / n if n else 0.0, "topk_rate": hits_k / n if n else 0.0, "rows": rows}


def _token_list(tokenizer) -> list[str]:
    """The vocabulary in id order (id -> token)."""
    vocab = tokenizer.vocab
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def encode_with_masks(tokenizer, text: str) -> list[int]:
    """``[CLS] text [SEP]`` as ids, each literal ``[MASK]`` in ``text`` kept as the one [MASK] token.

    The text is cut at the ``[MASK]`` markers and only the pieces between them are word-piece tokenized,
    so ``[MASK]`` is never split into ``[``, ``mask``, ``]`` whatever the tokenizer does with brackets.
    """
    if MASK not in text:
        raise ValueError(f"the text {text!r} has no {MASK}: mark the word(s) to predict with {MASK}, "
                         f"e.g. \"The {MASK} statement exits a loop.\"")
    for token in ("[CLS]", "[SEP]", MASK):
        if token not in tokenizer.vocab:
            raise ValueError(f"the vocabulary has no {token} token; use a BERT vocab.txt")
    tokens = ["[CLS]"]
    for i, piece in enumerate(text.split(MASK)):
        if i:
            tokens.append(MASK)
        tokens.extend(tokenizer.tokenize(piece))
    tokens.append("[SEP]")
    return [tokenizer.vocab[t] for t in tokens]


def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top_k`` most likely tokens, with probabilities, for each ``[MASK]`` in ``text``.

    ``model`` is a torch ``BertForMaskedLM`` or ``BertForPreTraining`` (anything whose output has
    ``prediction_logits [B, S, V]``); ``tokenizer`` the ``BertTokenizer`` it was trained with. Returns one
    list per ``[MASK]``, left to right, of ``(token, probability)`` sorted by probability.
    """
    return fill_mask_batch(model, tokenizer, [text], top_k)[0]


@torch.no_grad()
def fill_mask_batch(model, tokenizer, texts: list[str], top_k: int = 5,
                    batch_size: int = 32) -> list[list[list[tuple[str, float]]]]:
    """:func:`fill_mask` for many texts, run ``batch_size`` at a time (padded, the padding masked out)."""
    vocab_size = model.config.vocab_size
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be an integer in [1, {vocab_size}], got {top_k!r}")
    if len(tokenizer.vocab) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer.vocab)} tokens but the model's vocab_size is "
                         f"{vocab_size}: use the vocab.txt saved with the model")
    encoded = [encode_with_masks(tokenizer, text) for text in texts]
    limit = model.config.max_position_embeddings
    for ids in encoded:
        if len(ids) > limit:
            raise ValueError(f"the text is {len(ids)} tokens long but the model reads at most {limit}; shorten it")
    device = next(model.parameters()).device
    mask_id, pad_id = tokenizer.vocab[MASK], model.config.pad_token_id
    tokens = _token_list(tokenizer)
    model.eval()
    results = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in chunk], device=device)  # [B, S]
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in chunk], device=device)
        logits = model(input_ids, attention_mask=attention_mask).prediction_logits  # [B, S, V]
        for b, ids in enumerate(chunk):
            positions = [i for i, t in enumerate(ids) if t == mask_id]
            probs = torch.softmax(logits[b, positions].double(), dim=-1)  # [M, V] (M masks)
            if not bool(torch.isfinite(probs).all()):
                raise ValueError("the model's MLM logits are NaN or infinite, so there are no predictions to "
                                 "show; its weights or config.json (e.g. layer_norm_eps) are damaged")
            top = probs.topk(top_k, dim=-1)
            results.append([[(tokens[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
                            for values, indices in zip(top.values, top.indices)])
    return results


def load(model_dir: str, device: str = "cpu"):
    """(model, tokenizer) from a checkpoint directory (config.json, model.safetensors, vocab.txt)."""
    from minibert.modeling import BertForMaskedLM
    from minibert.tokenizer import BertTokenizer

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model {model_dir!r} is not a directory; pass a checkpoint directory "
                                f"such as runs/pretrain/last")
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise FileNotFoundError(f"{model_dir} has no vocab.txt: fill-mask needs the vocabulary the model was "
                                f"trained with (minibert pretrain saves it in every checkpoint)")
    model = BertForMaskedLM.from_pretrained(model_dir, device=device)
    return model, BertTokenizer.from_pretrained(model_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert fill-mask``'s options to ``parser``."""
    parser.add_argument("text", nargs="*", help=f"text with one or more {MASK} tokens")
    parser.add_argument("--model", required=True,
                        help="a run folder (e.g. runs/pretrain: its best/, else its last/ checkpoint) or a "
                             "checkpoint folder (e.g. runs/pretrain/last)")
    parser.add_argument("--top-k", type=int, default=5, help="predictions shown per mask")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--held-out", action="store_true",
                        help="instead of TEXT: one cloze prompt per sentence of the documents the pretraining "
                             "run held out, and how many the model gets right")
    parser.add_argument("--json", default=None,
                        help="with --held-out: also write every prompt's result to this file (default: none)")


def run(args) -> list:
    """Print the top-k predictions of every [MASK] of every text; returns them as ``fill_mask`` does."""
    from minibert.train.state import model_directory

    if args.held_out == bool(args.text):
        raise ValueError(f"give text with a {MASK} or --held-out, not both" if args.text else
                         f"give text with a {MASK} (e.g. \"The {MASK} statement exits a loop.\") or --held-out")
    if args.json is not None and not args.held_out:
        raise ValueError("--json goes with --held-out")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    model_dir = model_directory(args.model)
    model, tokenizer = load(model_dir, args.device)
    print(f"model: {model_dir}")
    print(f"model: {model_dir}: {model.loading_report()}", file=sys.stderr)
    if model.newly_initialized:
        print("warning: the checkpoint has no masked-LM head, so these predictions are random", file=sys.stderr)
    if args.held_out:
        return _run_held_out(model, tokenizer, model_dir, args)
    results = []
    for text in args.text:
        predictions = fill_mask(model, tokenizer, text, args.top_k)
        results.append(predictions)
        print(text)
        for n, candidates in enumerate(predictions, 1):
            label = f"{MASK} {n}" if len(predictions) > 1 else MASK
            print(f"  {label}: " + "  ".join(f"{token:<12} {p:6.1%}" for token, p in candidates).rstrip())
    return results


def _run_held_out(model, tokenizer, model_dir: str, args) -> dict:
    from minibert.files import atomic_write_text

    prompts = cloze(held_out_sentences(model_dir), tokenizer)
    if not prompts:
        raise ValueError(f"the documents held out by the run of {model_dir} give no cloze prompt (no sentence "
                         f"of 6-24 words with a whole-word content word)")
    result = score_held_out(model, tokenizer, prompts, args.top_k)
    print(f"{result['prompts']} held-out prompts: the masked word is the first guess in {result['top1']} "
          f"({result['top1_rate']:.1%}), in the top {args.top_k} in {result[f'top{args.top_k}_hits']} "
          f"({result['topk_rate']:.1%})")
    for row in [r for r in result["rows"] if r["rank"] is not None][:5]:
        print(f"  {row['text']}\n    -> " + "  ".join(f"{'*' if t == row['answer'] else ''}{t} {p:.1%}"
                                                  for t, p in row["top"]))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"model": model_dir, **result}, indent=1) + "\n")
    return result


def main(argv=None) -> list:
    """``python -m minibert.fill_mask --model DIR "text with a [MASK]"``."""
    from minibert.cli import HelpFormatter
    parser = argparse.ArgumentParser(prog="minibert fill-mask", formatter_class=HelpFormatter,
                                     description="Predict the tokens behind each [MASK] with a pretrained BERT.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
