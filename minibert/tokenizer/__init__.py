"""BERT's WordPiece tokenizer in pure Python, identical to HF's fast ``BertTokenizerFast``.

Text becomes model input in three stages (run ``python -m minibert.tokenizer --vocab DIR "text"`` to
watch each one), one module each:

1. **BasicTokenizer** (``basic.py``) cleans the text (drops NUL, U+FFFD and control/format characters,
   turns every kind of whitespace into a space), puts each CJK ideograph in a token of its own,
   lower-cases and strips accents, and splits on whitespace and punctuation. Special tokens written in
   the text (``[MASK]``) are cut out first and kept whole. Which character is punctuation, whitespace, an
   accent ... is decided by ``unicode_tables.py``.
2. **WordpieceTokenizer** (``wordpiece.py``) splits each word greedily into the longest vocabulary
   entries, left to right, marking word-internal pieces with ``##`` (``unaffable -> un ##aff ##able``).
3. **BertTokenizer** (``bert.py``) loads the vocabulary (``vocab_file.py``), maps pieces to ids, and
   builds model inputs (``encoding.py``): ``[CLS] A [SEP] (B [SEP])``, truncation (with stride windows for
   long documents), padding, and each token's character span in the *original* string.

``show.py`` prints every stage for one text; it is ``python -m minibert.tokenizer`` and
``minibert tokenize``.

Where the three well-known implementations (Google's original, HF's Python ``BertTokenizerLegacy`` and
HF's Rust-backed ``BertTokenizerFast``) disagree, minibert follows the fast one, which is what
``transformers`` uses by default; ``tests/test_tokenizer_conformance.py`` checks that on thousands of
generated strings and on every Unicode code point. Each module's docstring lists the differences that
concern it.
"""
from minibert.tokenizer.basic import BasicTokenizer
from minibert.tokenizer.bert import BertTokenizer
from minibert.tokenizer.encoding import PADDING_STRATEGIES, TRUNCATION_STRATEGIES, BatchEncoding
from minibert.tokenizer.show import main, show_work
from minibert.tokenizer.vocab_file import (CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, UNK_TOKEN,
                                           load_vocab)
from minibert.tokenizer.wordpiece import MAX_INPUT_CHARS_PER_WORD, WORDPIECE_PREFIX, WordpieceTokenizer

__all__ = ["BasicTokenizer", "BatchEncoding", "BertTokenizer", "CLS_TOKEN", "MASK_TOKEN",
           "MAX_INPUT_CHARS_PER_WORD", "PADDING_STRATEGIES", "PAD_TOKEN", "SEP_TOKEN", "SPECIAL_TOKENS",
           "TRUNCATION_STRATEGIES", "UNK_TOKEN", "WORDPIECE_PREFIX", "WordpieceTokenizer", "load_vocab", "main",
           "show_work"]
