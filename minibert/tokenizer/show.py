"""Show your work: every stage of tokenizing one text (or pair), and the ``minibert tokenize`` command.

    python -m minibert.tokenizer --vocab runs/vocab "Héllo, wörld!"
"""
from __future__ import annotations

import argparse

from minibert.tokenizer.bert import BertTokenizer


def show_work(tokenizer: BertTokenizer, text: str, text_pair: str | None = None) -> str:
    """Every stage of tokenizing ``text`` (and ``text_pair``) as printable text."""
    lines = []
    for label, part in (("text", text), ("text_pair", text_pair)):
        if part is None:
            continue
        basic = tokenizer.basic_tokenizer
        lines += [f"{label}:         {part!r}",
                  f"  cleaned:      {basic.normalize(part)!r}",
                  f"  basic tokens: {basic.tokenize(part)}",
                  f"  word pieces:  {tokenizer.tokenize(part)}"]
    enc = tokenizer(text, text_pair, return_offsets_mapping=True)
    lines.append(f"input_ids:      {enc['input_ids']}")
    lines.append(f"token_type_ids: {enc['token_type_ids']}")
    lines.append(f"{'#':>4}  {'id':>6}  {'type':>4}  {'token':<16}  {'offsets':<10}  covers")
    for i, (tid, ttype, (start, end)) in enumerate(zip(enc["input_ids"], enc["token_type_ids"],
                                                       enc["offset_mapping"])):
        source = text if ttype == 0 else text_pair
        covers = repr(source[start:end]) if end > start else "(special)"
        lines.append(f"{i:>4}  {tid:>6}  {ttype:>4}  {tokenizer.ids_to_tokens[tid]:<16}  "
                     f"{f'({start}, {end})':<10}  {covers}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m minibert.tokenizer [--vocab DIR_OR_VOCAB_TXT] [--cased] [--pair TEXT] TEXT``."""
    parser = argparse.ArgumentParser(prog="minibert tokenize", description=
                                     "Show every stage of BERT tokenization of TEXT.")
    parser.add_argument("text", help="the text to tokenize")
    parser.add_argument("--pair", default=None, help="an optional second text (sentence B)")
    parser.add_argument("--vocab", default=None, help="vocab.txt, tokenizer.json or a directory holding one "
                        "(default: the vocabulary trained on minibert's built-in corpus)")
    parser.add_argument("--cased", action="store_true", help="keep case and accents (do_lower_case=False)")
    args = parser.parse_args(argv)
    if args.vocab is None:
        from minibert.tokenizer.train import default_vocab_dir  # trains (once, then cached) on the built-in corpus
        args.vocab = default_vocab_dir()
    overrides = {"do_lower_case": False} if args.cased else {}
    tokenizer = BertTokenizer.from_pretrained(args.vocab, **overrides)
    print(show_work(tokenizer, args.text, args.pair))
    return 0
