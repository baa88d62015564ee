"""BERT's WordPiece tokenizer in pure Python (moved into a package; the code is in basic.py for now)."""
from minibert.tokenizer.basic import (CLS_TOKEN, MASK_TOKEN, MAX_INPUT_CHARS_PER_WORD, PAD_TOKEN,  # noqa: F401
                                      PADDING_STRATEGIES, SEP_TOKEN, SPECIAL_TOKENS, TRUNCATION_STRATEGIES,
                                      UNK_TOKEN, WORDPIECE_PREFIX, BasicTokenizer, BatchEncoding, BertTokenizer,
                                      WordpieceTokenizer, _is_punctuation, _is_removed, _is_whitespace,
                                      load_vocab, main, show_work)
