"""Stage 3 of BERT tokenization: the BertTokenizer, from text to ``input_ids`` and back.

It loads a vocabulary (``vocab.txt``, or HF's ``tokenizer.json``), runs the two earlier stages
(``BasicTokenizer``, then ``WordpieceTokenizer`` on each word), maps pieces to ids and remembers each
piece's character span in the *original* string. ``tokenizer(text, ...)`` then builds model inputs:
``[CLS] A [SEP] (B [SEP])``, truncation, stride windows, padding, tensors (``minibert.tokenizer.encoding``).
Output matches HF's ``BertTokenizerFast`` for the same vocabulary and flags.
"""
from __future__ import annotations

import json
import os

from minibert.files import atomic_write_text, read_json
from minibert.tokenizer.basic import BasicTokenizer, check_text
from minibert.tokenizer.encoding import BatchEncoding, encode_batch
from minibert.tokenizer.vocab_file import (CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, UNK_TOKEN,
                                           load_vocab)
from minibert.tokenizer.wordpiece import (MAX_INPUT_CHARS_PER_WORD, WORDPIECE_CACHE_SIZE, WORDPIECE_PREFIX,
                                          WordpieceTokenizer)


class BertTokenizer:
    """The full BERT tokenizer: text -> ``input_ids``, ``token_type_ids``, ``attention_mask`` (+ offsets).

    ``BertTokenizer(vocab_file, do_lower_case=True)`` or ``BertTokenizer.from_pretrained(directory)``;
    ``vocab_file`` is a path to ``vocab.txt`` or a ``{token: id}`` dict. Output matches HF's
    ``BertTokenizerFast`` for the same vocabulary and flags.

    >>> tok = BertTokenizer.from_pretrained("runs/vocab")  # doctest: +SKIP
    >>> tok("Hello, world!", return_offsets_mapping=True)["offset_mapping"]  # doctest: +SKIP
    [(0, 0), (0, 5), (5, 6), (7, 12), (12, 13), (0, 0)]
    """

    def __init__(self, vocab_file, do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None,
                 max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD):
        self.vocab = dict(vocab_file) if isinstance(vocab_file, dict) else load_vocab(vocab_file)
        missing = [t for t in (UNK_TOKEN, CLS_TOKEN, SEP_TOKEN) if t not in self.vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks {', '.join(missing)}; BERT needs [UNK], [CLS] and [SEP] "
                             "(and usually [PAD], [MASK]): add them as lines of vocab.txt")
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        if sorted(self.ids_to_tokens) != list(range(len(self.vocab))):
            raise ValueError("vocabulary ids must be 0 .. len(vocab) - 1 with no gaps or repeats")
        self.do_lower_case = bool(do_lower_case)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = strip_accents
        self.special_tokens = tuple(t for t in SPECIAL_TOKENS if t in self.vocab)
        self.basic_tokenizer = BasicTokenizer(do_lower_case, self.special_tokens, tokenize_chinese_chars,
                                              strip_accents)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, UNK_TOKEN, max_input_chars_per_word)
        self._pieces_cache: dict[str, tuple] = {}  # word -> its pieces as (id, start, end)

    # ---- loading and saving -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "BertTokenizer":
        """Load from a directory holding ``vocab.txt`` (+ ``tokenizer_config.json``) or an HF ``tokenizer.json``.

        ``path`` may also name a ``vocab.txt`` or ``tokenizer.json`` file. ``kwargs`` (``do_lower_case``
        ...) override what the directory says.
        """
        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        options = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            config = read_json(config_path)
            options = _checked_options(config_path, {k: config[k] for k in _FLAG_TYPES if k in config})
        if os.path.isdir(path):
            vocab_txt, tokenizer_json = os.path.join(path, "vocab.txt"), os.path.join(path, "tokenizer.json")
            if os.path.isfile(vocab_txt):
                path = vocab_txt
            elif os.path.isfile(tokenizer_json):
                path = tokenizer_json
            else:
                raise FileNotFoundError(f"{path!r} holds neither vocab.txt nor tokenizer.json")
        if path.endswith(".json"):
            vocab, json_options = _read_tokenizer_json(path)
            options.update(_checked_options(path, json_options))
        else:
            vocab = load_vocab(path)
        options.update(kwargs)
        return cls(vocab, **options)

    def save_pretrained(self, directory) -> list[str]:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` (HF format) atomically; returns their paths."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        vocab_path = os.path.join(directory, "vocab.txt")
        config_path = os.path.join(directory, "tokenizer_config.json")
        atomic_write_text(vocab_path, "".join(self.ids_to_tokens[i] + "\n" for i in range(len(self))))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "tokenize_chinese_chars": self.tokenize_chinese_chars, "strip_accents": self.strip_accents,
                  "unk_token": UNK_TOKEN, "sep_token": SEP_TOKEN, "pad_token": PAD_TOKEN,
                  "cls_token": CLS_TOKEN, "mask_token": MASK_TOKEN}
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return [vocab_path, config_path]

    # ---- vocabulary -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.vocab)

    def _special_id(self, token):
        return self.vocab.get(token)

    cls_token_id = property(lambda self: self._special_id(CLS_TOKEN), doc="id of [CLS]")
    sep_token_id = property(lambda self: self._special_id(SEP_TOKEN), doc="id of [SEP]")
    mask_token_id = property(lambda self: self._special_id(MASK_TOKEN), doc="id of [MASK] (None if absent)")
    pad_token_id = property(lambda self: self._special_id(PAD_TOKEN), doc="id of [PAD] (None if absent)")
    unk_token_id = property(lambda self: self._special_id(UNK_TOKEN), doc="id of [UNK]")

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the special tokens in the vocabulary, in HF's order ([UNK], [SEP], [PAD], [CLS], [MASK])."""
        order = (UNK_TOKEN, SEP_TOKEN, PAD_TOKEN, CLS_TOKEN, MASK_TOKEN)
        return [self.vocab[t] for t in order if t in self.vocab]

    def convert_tokens_to_ids(self, tokens):
        """A token (or list of tokens) -> its id; tokens not in the vocabulary map to [UNK]."""
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        return [self.vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        """An id (or list of ids) -> its token; raises ValueError for ids outside the vocabulary."""
        if isinstance(ids, int) or hasattr(ids, "__index__"):
            return self._id_to_token(int(ids))
        return [self._id_to_token(int(i)) for i in ids]

    def _id_to_token(self, i: int) -> str:
        token = self.ids_to_tokens.get(i)
        if token is None:
            raise ValueError(f"token id {i} is outside the vocabulary (0 .. {len(self) - 1})")
        return token

    # ---- text -> tokens -----------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """``text`` -> word pieces (special tokens written in the text stay whole; no [CLS]/[SEP] added)."""
        return [self.ids_to_tokens[i] for i in self._encode_text(check_text(text))[0]]

    def _encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """One text -> (ids, offsets): the work shared by every public method."""
        cache = self._pieces_cache
        ids, offsets = [], []
        for word, start, _, positions in self.basic_tokenizer._words(text):
            pieces = cache.get(word)
            if pieces is None:
                pieces = self._word_pieces(word)
            if positions is None:
                for piece_id, a, b in pieces:
                    ids.append(piece_id)
                    offsets.append((start + a, start + b))
            else:
                for piece_id, a, b in pieces:
                    ids.append(piece_id)
                    offsets.append((positions[a], positions[b - 1] + 1))
        return ids, offsets

    def _word_pieces(self, word: str) -> tuple:
        """``((id, start, end), ...)`` for one basic token (cached). A special token such as ``[MASK]`` is
        its own longest match, so it needs no special case."""
        if len(self._pieces_cache) >= WORDPIECE_CACHE_SIZE:
            self._pieces_cache.clear()
        vocab = self.vocab
        pieces = tuple((vocab[p], a, b) for p, a, b in self.wordpiece_tokenizer._split(word))
        self._pieces_cache[word] = pieces
        return pieces

    def encode(self, text, text_pair=None, add_special_tokens=True, truncation=False, max_length=None,
               stride=0) -> list[int]:
        """``text`` (and ``text_pair``) -> ``input_ids`` of one sequence (the first window if truncated)."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length, stride=stride)["input_ids"]

    def decode(self, ids, skip_special_tokens=False) -> str:
        """Ids -> text: ``##`` pieces are glued to the previous token, and the space before ``.``, ``,``,
        ``?``, ``!`` and a few English contractions is removed (as HF's WordPiece decoder does)."""
        special = set(self.all_special_ids) if skip_special_tokens else set()
        parts = []
        for i in ids:
            i = int(i)
            if i in special:
                continue
            token = self._id_to_token(i)
            if parts:
                token = token[len(WORDPIECE_PREFIX):] if token.startswith(WORDPIECE_PREFIX) else " " + token
            parts.append(_cleanup(token))
        return "".join(parts)

    # ---- the model-input builder (minibert.tokenizer.encoding) ------------------------------------

    def __call__(self, text, text_pair=None, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, stride=0, return_overflowing_tokens=False, return_offsets_mapping=False,
                 return_special_tokens_mask=False, return_tensors=None) -> BatchEncoding:
        """Tokenize one text, a pair, or a batch (a list of texts, with an optional list of pairs).

        Returns a ``BatchEncoding`` (a dict) with ``input_ids``, ``token_type_ids`` (0 for ``[CLS] A [SEP]``,
        1 for ``B [SEP]``), ``attention_mask`` (1 real, 0 padding) and, on request, ``offset_mapping``
        (character spans in the original text, (0, 0) for special and padding tokens),
        ``special_tokens_mask`` and, with ``return_overflowing_tokens``, one row per window plus
        ``overflow_to_sample_mapping`` (which input each row came from). A single text gives flat lists
        unless windows overflow; ``return_tensors="np"`` or ``"pt"`` gives ``[batch, seq]`` arrays.
        """
        return encode_batch(self, text, text_pair, add_special_tokens=add_special_tokens, padding=padding,
                            truncation=truncation, max_length=max_length, stride=stride,
                            return_overflowing_tokens=return_overflowing_tokens,
                            return_offsets_mapping=return_offsets_mapping,
                            return_special_tokens_mask=return_special_tokens_mask, return_tensors=return_tensors)


def _cleanup(token: str) -> str:
    """HF's WordPiece-decoder clean-up: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        token = token.replace(before, after)
    return token


# The flags a tokenizer file may set, and the JSON values each accepts. A string such as "false" is
# refused rather than read: Python's bool("false") is True, which would silently lower-case a cased model.
_FLAG_TYPES = {"do_lower_case": (bool,), "tokenize_chinese_chars": (bool,), "strip_accents": (bool, type(None)),
               "max_input_chars_per_word": (int,)}


def _checked_options(path: str, options: dict) -> dict:
    """``options`` read from ``path``, after checking each holds a value of the JSON type its flag takes."""
    for key, value in options.items():
        types = _FLAG_TYPES[key]
        if not isinstance(value, types) or (types == (int,) and (isinstance(value, bool) or value < 1)):
            wanted = {(bool,): "true or false", (bool, type(None)): "true, false or null",
                      (int,): "a positive integer"}[types]
            raise ValueError(f"{path!r}: {key} must be {wanted}, not {json.dumps(value)}")
    return options


def _read_tokenizer_json(path: str) -> tuple[dict, dict]:
    """An HF ``tokenizer.json`` holding a WordPiece model -> (vocab, BertTokenizer options)."""
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path!r} does not hold a WordPiece model (model.type is {model.get('type')!r})")
    if model.get("continuing_subword_prefix", WORDPIECE_PREFIX) != WORDPIECE_PREFIX:
        raise ValueError(f"{path!r} uses continuing_subword_prefix "
                         f"{model['continuing_subword_prefix']!r}; BERT's is '##'")
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    options = {"max_input_chars_per_word": model.get("max_input_chars_per_word", MAX_INPUT_CHARS_PER_WORD)}
    normalizer = data.get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer":
        options.update(do_lower_case=normalizer.get("lowercase", True),
                       tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True),
                       strip_accents=normalizer.get("strip_accents"))
    return vocab, options
