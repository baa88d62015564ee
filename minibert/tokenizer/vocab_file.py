"""A BERT vocabulary on disk: ``vocab.txt``, one token per line, the line number is the token's id.

Also the five special tokens every BERT vocabulary reserves.
"""
from __future__ import annotations

import os

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = SPECIAL_TOKENS


def load_vocab(path) -> dict[str, int]:
    """Read a ``vocab.txt`` (one token per line, line number = id) into an ordered ``{token: id}`` dict.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is empty, not UTF-8,
    or has blank lines or duplicate tokens (each would silently shift or shadow ids).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; pass the vocab.txt inside it, or use "
                                "BertTokenizer.from_pretrained(directory)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file {path!r} does not exist; pass a vocab.txt or a directory "
                                "holding vocab.txt or tokenizer.json")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"vocabulary file {path!r} is not UTF-8 ({e}); re-save it as UTF-8") from None
    # Some editors start a UTF-8 file with a byte-order mark. It is never part of a token: left in place
    # it would turn token 0 into "\ufeff[PAD]" and leave [PAD] itself out of the vocabulary.
    text = text.removeprefix("\ufeff")
    # Like Python's text mode (and HF's loader): \n, \r\n and \r end a line, nothing else does.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline after the last token
    if not lines:
        raise ValueError(f"vocabulary file {path!r} is empty; it needs one token per line")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if not token.strip():
            raise ValueError(f"vocabulary file {path!r} has a blank line at line {index + 1}; every line "
                             "must hold one token (its id is the line number - 1)")
        if token in vocab:
            raise ValueError(f"vocabulary file {path!r} lists {token!r} twice (lines {vocab[token] + 1} and "
                             f"{index + 1}); remove the duplicate")
        vocab[token] = index
    return vocab
