"""Stage 2 of BERT tokenization: WordPiece splits each word into the longest vocabulary entries.

Greedily, left to right, marking word-internal pieces with ``##`` (``unaffable -> un ##aff ##able``). A
word with any piece missing from the vocabulary becomes ``[UNK]`` as a whole, and so does a word over
100 characters.
"""
from __future__ import annotations

from minibert.tokenizer.vocab_file import UNK_TOKEN

WORDPIECE_PREFIX = "##"  # marks a piece that continues a word (google-research/bert)
MAX_INPUT_CHARS_PER_WORD = 100  # longer "words" (URLs, base64) become [UNK] instead of hundreds of pieces
WORDPIECE_CACHE_SIZE = 200_000  # words remembered per tokenizer before the cache starts afresh


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece: ``"unaffable" -> ["un", "##aff", "##able"]``.

    Starting at the beginning of the word, take the longest vocabulary entry that matches (``##``-prefixed
    after the first piece), then continue after it. If at some point nothing matches, the whole word
    becomes ``unk_token``, because a partial split would claim knowledge the vocabulary does not have.
    """

    def __init__(self, vocab: dict, unk_token: str = UNK_TOKEN,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        # No piece is longer than the longest entry, so the search never tries longer substrings.
        self._longest_piece = max((len(t) for t in vocab), default=0)
        self._longest_continuation = max((len(t) - len(WORDPIECE_PREFIX) for t in vocab
                                          if t.startswith(WORDPIECE_PREFIX)), default=0)
        self._cache: dict[str, tuple] = {}

    def tokenize(self, word: str) -> list[str]:
        """Split one (already basic-tokenized) word into word pieces."""
        return [piece for piece, _, _ in self.tokenize_with_offsets(word)]

    def tokenize_with_offsets(self, word: str) -> tuple:
        """``((piece, start, end), ...)``: each piece with its character span inside ``word`` (cached)."""
        pieces = self._cache.get(word)
        if pieces is None:
            if len(self._cache) >= WORDPIECE_CACHE_SIZE:
                self._cache.clear()
            pieces = self._cache[word] = self._split(word)
        return pieces

    def _split(self, word: str) -> tuple:
        """The greedy search itself (uncached): ``((piece, start, end), ...)`` or one ``unk_token`` span."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return ((self.unk_token, 0, n),)
        vocab = self.vocab
        pieces = []
        start = 0
        while start < n:
            prefix = WORDPIECE_PREFIX if start else ""
            end = min(n, start + (self._longest_continuation if start else self._longest_piece))
            while end > start:
                piece = prefix + word[start:end]
                if piece in vocab:
                    pieces.append((piece, start, end))
                    break
                end -= 1
            else:
                return ((self.unk_token, 0, n),)
            start = end
        return tuple(pieces)
