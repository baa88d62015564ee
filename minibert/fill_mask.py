"""``minibert fill-mask``: ask a pretrained BERT what belongs where the ``[MASK]`` is.

This is the masked-LM task the model was pretrained on, asked directly: the text is tokenized, every
``[MASK]`` stays a single ``[MASK]`` token, and the MLM head's softmax at each masked position is the
model's belief about the missing word piece. Try it on a run of ``minibert pretrain``::

    python -m minibert fill-mask --model runs/pretrain "The [MASK] statement exits a loop."

``--model`` takes a run folder (its ``best/``, else its ``last/`` checkpoint) or a checkpoint folder,
as every command does (``minibert.train.state.model_directory``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

MASK = "[MASK]"


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


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top_k`` most likely tokens, with probabilities, for each ``[MASK]`` in ``text``.

    ``model`` is a torch ``BertForMaskedLM`` or ``BertForPreTraining`` (anything whose output has
    ``prediction_logits [B, S, V]``); ``tokenizer`` the ``BertTokenizer`` it was trained with. Returns one
    list per ``[MASK]``, left to right, of ``(token, probability)`` sorted by probability.
    """
    vocab_size = model.config.vocab_size
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be an integer in [1, {vocab_size}], got {top_k!r}")
    if len(tokenizer.vocab) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer.vocab)} tokens but the model's vocab_size is "
                         f"{vocab_size}: use the vocab.txt saved with the model")
    ids = encode_with_masks(tokenizer, text)
    limit = model.config.max_position_embeddings
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens long but the model reads at most {limit}; shorten it")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)                         # [1, S]
    model.eval()
    logits = model(input_ids, attention_mask=torch.ones_like(input_ids)).prediction_logits[0]  # [S, V]
    mask_id = tokenizer.vocab[MASK]
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    probs = torch.softmax(logits[positions].double(), dim=-1)              # [M, V] (M masks)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("the model's MLM logits are NaN or infinite, so there are no predictions to show; "
                         "its weights or config.json (e.g. layer_norm_eps) are damaged")
    top = probs.topk(top_k, dim=-1)
    tokens = _token_list(tokenizer)
    return [[(tokens[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)]


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
    parser.add_argument("text", nargs="+", help=f"text with one or more {MASK} tokens")
    parser.add_argument("--model", required=True,
                        help="a run folder (e.g. runs/pretrain: its best/, else its last/ checkpoint) or a "
                             "checkpoint folder (e.g. runs/pretrain/last)")
    parser.add_argument("--top-k", type=int, default=5, help="predictions shown per mask")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args) -> list:
    """Print the top-k predictions of every [MASK] of every text; returns them as ``fill_mask`` does."""
    from minibert.train.state import model_directory

    model_dir = model_directory(args.model)
    model, tokenizer = load(model_dir, args.device)
    print(f"model: {model_dir}")
    print(f"model: {model_dir}: {model.loading_report()}", file=sys.stderr)
    if model.newly_initialized:
        print("warning: the checkpoint has no masked-LM head, so these predictions are random", file=sys.stderr)
    results = []
    for text in args.text:
        predictions = fill_mask(model, tokenizer, text, args.top_k)
        results.append(predictions)
        print(text)
        for n, candidates in enumerate(predictions, 1):
            label = f"{MASK} {n}" if len(predictions) > 1 else MASK
            print(f"  {label}: " + "  ".join(f"{token:<12} {p:6.1%}" for token, p in candidates).rstrip())
    return results


def main(argv=None) -> list:
    """``python -m minibert.fill_mask --model DIR "text with a [MASK]"``."""
    from minibert.cli import HelpFormatter
    parser = argparse.ArgumentParser(prog="minibert fill-mask", formatter_class=HelpFormatter,
                                     description="Predict the tokens behind each [MASK] with a pretrained BERT.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
