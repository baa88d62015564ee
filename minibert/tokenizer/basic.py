"""BERT's WordPiece tokenizer in pure Python, identical to HF's fast ``BertTokenizerFast``.

Text becomes model input in three stages (run ``python -m minibert.tokenizer --vocab DIR "text"`` to
watch each one):

1. **BasicTokenizer** cleans the text (drops NUL, U+FFFD and control/format characters, turns every kind
   of whitespace into a space), puts each CJK ideograph in a token of its own, lower-cases and strips
   accents (NFD, then drop the non-spacing marks, category Mn), and splits on whitespace and punctuation.
   Special tokens written in the text (``[MASK]``) are cut out first and kept whole.
2. **WordpieceTokenizer** splits each word greedily into the longest vocabulary entries, left to right,
   marking word-internal pieces with ``##`` (``unaffable -> un ##aff ##able``). A word with any piece
   missing from the vocabulary becomes ``[UNK]`` as a whole, and so does a word over 100 characters.
3. **BertTokenizer** maps pieces to ids, adds ``[CLS] A [SEP] (B [SEP])``, truncates (with stride
   windows for long documents), pads, and reports each token's character span in the *original* string.

Every stage tracks, for each character it produces, the index of the original character it came from, so
offsets survive removed control characters, ``é -> e`` and ``İ -> i̇`` (one character becoming two).

Where the three well-known implementations disagree, minibert follows the fast (Rust) tokenizer, which is
what ``transformers`` uses by default; ``tests/test_tokenizer_conformance.py`` checks that on thousands of
generated strings and on every Unicode code point. The differences, for the record:

* **Character tables.** The Rust ``tokenizers`` crate classifies punctuation (P*), non-spacing marks (Mn)
  and format characters (Cf) with Unicode 8.0 tables, while Python's ``unicodedata`` (3.11: Unicode 14)
  knows later additions. Characters added since are ordinary letters to the fast tokenizer (its NFD
  also leaves U+11938 whole and gives newer marks combining class 0); the ``_FAST_*`` tables below list
  exactly those code points so we agree with it. Unassigned code points (Cn) are kept as letters,
  private-use (Co) are dropped. Lower-casing in Rust, on the contrary, knows Unicode 16, so
  ``_NEWER_LOWERCASE`` adds the 55 capitals Python 3.11 does not know yet. (The tables are exact for
  Python 3.11's Unicode 14; a newer Python knows more characters, which the conformance test reports.)
* **CJK ranges.** Google's code splits ``U+2B820..U+2CEAF``; the fast tokenizer starts that block at
  ``U+2B920`` (a typo upstream), so ``U+2B820..U+2B91F`` stay inside words. We follow the fast one.
* **Lower-casing is per character.** ``"ΑΣ".lower()`` is ``"ας"`` in Python (final sigma) but the fast
  tokenizer lower-cases character by character and gives ``"ασ"``; so do we.
* **Order of accent stripping and lower-casing.** The fast tokenizer strips accents, then lower-cases; the
  original lower-cases, then strips. No single character of Unicode 14 comes out differently.
* **Control characters.** Google drops Cc and Cf; HF's Python tokenizer (``BertTokenizerLegacy``) drops
  every C* category, unassigned code points included; the fast one drops Cc, Cf (Unicode 8.0) and Co.
  (All three split on ``U+2028``/``U+2029``: Google's and the legacy one through Python's ``str.split``.)
* **Special tokens in text.** ``"a[MASK]b"`` gives ``a [MASK] b`` here and in both HF tokenizers (the
  special token is matched anywhere in the raw text, case-sensitively); Google's tokenizer knows no
  special tokens and gives ``a [ mask ] b``. ``never_split`` in this BasicTokenizer works the same way
  (substring match, longest first), not only on whitespace-separated words as in the legacy tokenizer.
* **Accent stripping reorders marks.** The fast tokenizer runs NFD over the whole text, which sorts a run
  of combining marks into canonical order even across characters; Python's per-token NFD does the same.
  We decompose character by character (cached) and redo the rare text where a mark survives stripping
  with the fast tokenizer's reordering and offset rules (``BasicTokenizer._reordered``).
* **Lone surrogates** (``"\\ud800"``, only possible in Python strings) are dropped here; the Rust
  tokenizer cannot receive them at all.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
import unicodedata

from minibert.io import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = SPECIAL_TOKENS
WORDPIECE_PREFIX = "##"  # marks a piece that continues a word (google-research/bert)
MAX_INPUT_CHARS_PER_WORD = 100  # longer "words" (URLs, base64) become [UNK] instead of hundreds of pieces
PADDING_STRATEGIES = (False, True, "do_not_pad", "longest", "max_length")
TRUNCATION_STRATEGIES = (False, True, "do_not_truncate", "longest_first", "only_first", "only_second")

# CJK ideographs are written without spaces, so BERT splits them one per token (a character-level model
# for Chinese/Japanese kanji). These are the "CJK Unified Ideographs" blocks and their extensions; the
# sixth range starts at U+2B920 in the fast tokenizer (U+2B820 in Google's code), see the docstring.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _parse_ranges(text: str) -> frozenset:
    """``"7FD 898-89F"`` -> the set of those code points (hexadecimal, ranges inclusive)."""
    points = set()
    for item in text.split():
        lo, _, hi = item.partition("-")
        points.update(range(int(lo, 16), int(hi or lo, 16) + 1))
    return frozenset(points)


# Code points where Python's Unicode 14 category and the fast tokenizer's Unicode 8.0 table disagree
# (measured against `tokenizers` over all of Unicode; tests/test_tokenizer_conformance.py re-checks it).
_FAST_NOT_MN = _parse_ranges("""
    7FD 898-89F 8CA-8E1 9FE AFA-AFF B55 C04 C3C D00 D3B-D3C D81 EBA 180F 1885-1886 1ABF-1ACE 1DF6-1DFB
    A82C A8C5 A8FF A9BD 10D24-10D27 10EAB-10EAC 10F46-10F50 10F82-10F85 11070 11073-11074 110C2 111C9
    111CF 1123E 1133B 11438-1143F 11442-11444 11446 1145E 1182F-11837 11839-1183A 1193B-1193C 1193E
    11943 119D4-119D7 119DA-119DB 119E0 11A01-11A0A 11A33-11A38 11A3B-11A3E 11A47 11A51-11A56
    11A59-11A5B 11A8A-11A96 11A98-11A99 11C30-11C36 11C38-11C3D 11C3F 11C92-11CA7 11CAA-11CB0
    11CB2-11CB3 11CB5-11CB6 11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97
    11EF3-11EF4 16F4F 16FE4 1CF00-1CF2D 1CF30-1CF46 1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024
    1E026-1E02A 1E130-1E136 1E2AE 1E2EC-1E2EF 1E944-1E94A""")
_FAST_EXTRA_MN = _parse_ranges("1734")  # Mn in Unicode 8.0, Mc since
_FAST_NOT_PUNCT = _parse_ranges("""
    61D 9FD A76 C77 C84 1B7D-1B7E 2E43-2E4F 2E52-2E5D 10EAD 10F55-10F59 10F86-10F89 1144B-1144F
    1145A-1145B 1145D 11660-1166C 116B9 1183B 11944-11946 119E2 11A3F-11A46 11A9A-11A9C 11A9E-11AA2
    11C41-11C45 11C70-11C71 11EF7-11EF8 11FFF 12FF1-12FF2 16E97-16E9A 16FE2 1E95E-1E95F""")
_FAST_EXTRA_PUNCT = _parse_ranges("166D 111C9")  # punctuation in Unicode 8.0, recategorised since
_FAST_KEPT_FORMAT = _parse_ranges("890-891 8E2 110CD 13430-13438")  # Cf added after Unicode 8.0
_FAST_NOT_DECOMPOSED = frozenset("\U00011938")  # its NFD decomposition came with Unicode 13.0
# Combining marks newer than the fast tokenizer's normalization tables: class 0 there, so NFD never moves
# them (or anything across them) when it sorts marks into canonical order.
_FAST_NOT_COMBINING = _parse_ranges("""
    7FD 898-89F 8CA-8D3 9FE C3C D3B-D3C EBA 1715 1ABF-1ACE 1DF6-1DFA A82C 10D24-10D27 10EAB-10EAC
    10F46-10F50 10F82-10F85 11070 1133B 1145E 11839-1183A 1193D-1193E 11943 119E0 11A34 11A47 11A99 11D42
    11D44-11D45 11D97 16FF0-16FF1 1E130-1E136 1E2AE 1E2EC-1E2EF""")
# Capital letters added in Unicode 15-16 (unknown to Python 3.11) -> their lower case, as Rust maps them.
_NEWER_LOWERCASE = {chr(cp): chr(cp + delta) for lo, hi, delta in (
    (0x1C89, 0x1C89, 1), (0xA7CB, 0xA7CB, 0x264 - 0xA7CB), (0xA7CC, 0xA7CC, 1), (0xA7CE, 0xA7CE, 1),
    (0xA7D2, 0xA7D2, 1), (0xA7D4, 0xA7D4, 1), (0xA7DA, 0xA7DA, 1), (0xA7DC, 0xA7DC, 0x19B - 0xA7DC),
    (0x10D50, 0x10D65, 0x20), (0x16EA0, 0x16EB8, 0x1B)) for cp in range(lo, hi + 1)}

# What one character of normalized text does in the pre-tokenizer.
_WORD, _ISOLATED, _SPACE, _MARK = 0, 1, 2, 3  # _MARK: a word character that is a combining mark
# ASCII text without control characters takes a regex fast path: words are runs of letters and digits,
# every other printable character is punctuation (BERT counts "$", "^", "`" etc. as punctuation too).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")
_ASCII_PUNCT = frozenset(string.punctuation)
_WORDPIECE_CACHE_SIZE = 200_000  # words remembered per tokenizer before the cache starts afresh


def _is_removed(ch: str) -> bool:
    """True for characters text cleaning drops: NUL, U+FFFD, controls (not \\t\\n\\r), format, private use."""
    if ch in "\t\n\r":
        return False
    cp = ord(ch)
    cat = unicodedata.category(ch)
    return (cp == 0 or cp == 0xFFFD or cat in ("Cc", "Co", "Cs")
            or (cat == "Cf" and cp not in _FAST_KEPT_FORMAT))


def _is_whitespace(ch: str) -> bool:
    """Unicode White_Space as Rust sees it (Python's isspace also counts the controls U+001C..U+001F)."""
    return ch.isspace() and not "\x1c" <= ch <= "\x1f"


def _is_punctuation(ch: str) -> bool:
    """ASCII non-alphanumerics and Unicode P* (Unicode 8.0 tables, as in the fast tokenizer)."""
    if ch in _ASCII_PUNCT:
        return True
    cp = ord(ch)
    if cp in _FAST_EXTRA_PUNCT:
        return True
    return unicodedata.category(ch).startswith("P") and cp not in _FAST_NOT_PUNCT


def _is_nonspacing_mark(ch: str) -> bool:
    """Category Mn (accents and other combining marks drawn on top of a letter), Unicode 8.0 tables."""
    cp = ord(ch)
    if cp in _FAST_EXTRA_MN:
        return True
    return unicodedata.category(ch) == "Mn" and cp not in _FAST_NOT_MN


def _combining_class(ch: str) -> int:
    """Canonical combining class (0 for letters; marks sort by it in NFD), as the fast tokenizer knows it."""
    return 0 if ord(ch) in _FAST_NOT_COMBINING else unicodedata.combining(ch)


def _is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (see _CJK_RANGES)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


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


class BasicTokenizer:
    """Cleaning, CJK splitting, lower-casing/accent stripping and whitespace/punctuation splitting.

    ``strip_accents=None`` follows ``do_lower_case`` (as in the original BERT). ``never_split`` lists
    strings (special tokens) that are cut out of the raw text wherever they occur and kept whole.

    >>> BasicTokenizer().tokenize("Héllo, WORLD! 你好")
    ['hello', ',', 'world', '!', '你', '好']
    """

    def __init__(self, do_lower_case=True, never_split=None, tokenize_chinese_chars=True, strip_accents=None):
        self.do_lower_case = bool(do_lower_case)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = self.do_lower_case if strip_accents is None else bool(strip_accents)
        self.never_split = tuple(sorted(set(never_split or ()), key=len, reverse=True))
        if any(not isinstance(t, str) or not t for t in self.never_split):
            raise ValueError(f"never_split must hold non-empty strings, got {never_split!r}")
        # Longest first, so "[MASK]" wins over a hypothetical "[MA" at the same position.
        self._never_split_re = re.compile("|".join(map(re.escape, self.never_split))) if self.never_split else None
        self._char_cache: dict[str, tuple] = {}

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into normalized words and punctuation marks."""
        return [token for token, _, _, _ in self._words(_check_text(text))]

    def tokenize_with_offsets(self, text: str) -> list[tuple[str, int, int]]:
        """Like :meth:`tokenize`, with each token's ``(start, end)`` span in the original ``text``."""
        return [(token, start, end) for token, start, end, _ in self._words(_check_text(text))]

    def normalize(self, text: str) -> str:
        """The cleaned, lower-cased, accent-stripped text, CJK ideographs padded with spaces (for display);
        never_split tokens are left as written."""
        text, parts, start = _check_text(text), [], 0
        matches = self._never_split_re.finditer(text) if self._never_split_re else ()
        for end, match in [(m.start(), m) for m in matches] + [(len(text), None)]:
            for ch in text[start:end]:
                for piece, kind in self._char_entries(ch):
                    cjk = kind == _ISOLATED and self.tokenize_chinese_chars and _is_cjk(ch)
                    parts.append(f" {piece} " if cjk else piece)
            if match is not None:
                parts.append(match.group())
                start = match.end()
        return "".join(parts)

    def _char_entries(self, ch: str) -> tuple:
        """What one original character becomes: a tuple of ``(normalized_char, kind)`` (cached)."""
        entries = self._char_cache.get(ch)
        if entries is None:
            if _is_removed(ch):
                entries = ()
            elif _is_whitespace(ch):
                entries = ((" ", _SPACE),)
            elif self.tokenize_chinese_chars and _is_cjk(ch):
                entries = tuple((c, _ISOLATED) for c, _ in self._finish(self._decompose(ch)))
            else:
                entries = self._finish(self._decompose(ch))
            self._char_cache[ch] = entries
        return entries

    def _decompose(self, ch: str) -> str:
        """NFD of ``ch`` when stripping accents (accents become separate combining marks), else ``ch``."""
        if self.strip_accents and ch not in _FAST_NOT_DECOMPOSED:
            return unicodedata.normalize("NFD", ch)
        return ch

    def _finish(self, chars: str) -> tuple:
        """Decomposed characters -> ``((char, kind), ...)``: drop accents, lower-case, classify."""
        if self.strip_accents:
            chars = "".join(c for c in chars if not _is_nonspacing_mark(c))
        if self.do_lower_case:
            chars = "".join(_NEWER_LOWERCASE.get(c) or c.lower() for c in chars)  # no final-sigma rule
        entries = []
        for c in chars:
            if _is_whitespace(c):
                kind = _SPACE
            elif _is_punctuation(c):
                kind = _ISOLATED
            else:  # a combining mark that survives accent stripping may need reordering, see _reordered
                kind = _MARK if self.strip_accents and _combining_class(c) else _WORD
            entries.append((c, kind))
        return tuple(entries)

    def _words(self, text: str) -> list[tuple]:
        """``(token, start, end, positions)`` for every basic token of ``text``.

        ``positions[i]`` is the index in ``text`` of the character that normalized character ``i`` of the
        token came from, or ``None`` when the token maps one-to-one onto ``text[start:end]`` (ASCII words,
        punctuation, never_split tokens); word pieces use it to find their own spans.
        """
        if self._never_split_re is None or not self._never_split_re.search(text):
            return self._segment_words(text, 0)
        words, start = [], 0
        for match in self._never_split_re.finditer(text):
            words += self._segment_words(text[start:match.start()], start)
            words.append((match.group(), match.start(), match.end(), None))
            start = match.end()
        return words + self._segment_words(text[start:], start)

    def _segment_words(self, text: str, base: int) -> list[tuple]:
        """_words for a stretch of text with no never_split token in it; ``base`` is its offset."""
        if text.isascii() and not _ASCII_CONTROL.search(text):
            if self.do_lower_case:
                text = text.lower()  # one-to-one on ASCII, so offsets stay put
            return [(m.group(), base + m.start(), base + m.end(), None) for m in _ASCII_TOKEN.finditer(text)]
        words, has_marks = self._group(text, base, None)
        if has_marks:
            words, _ = self._group(text, base, self._reordered(text, base))
        return words

    def _group(self, text: str, base: int, overrides) -> tuple[list[tuple], bool]:
        """Group normalized characters into words and isolated tokens; also say whether a combining mark
        survived. ``overrides`` maps a position to entries that replace that character's cached ones."""
        words = []
        chars: list[str] = []
        positions: list[int] = []
        has_marks = False
        cache = self._char_cache
        for i, ch in enumerate(text, base):
            entries = overrides.get(i) if overrides else None
            if entries is None:
                entries = cache.get(ch)
                if entries is None:
                    entries = self._char_entries(ch)
            for c, kind in entries:
                if kind == _WORD or kind == _MARK:
                    chars.append(c)
                    positions.append(i)
                    has_marks = has_marks or kind == _MARK
                    continue
                if chars:
                    words.append(("".join(chars), positions[0], positions[-1] + 1, positions))
                    chars, positions = [], []
                if kind == _ISOLATED:
                    words.append((c, i, i + 1, None))
        if chars:
            words.append(("".join(chars), positions[0], positions[-1] + 1, positions))
        return words, has_marks

    def _reordered(self, text: str, base: int) -> dict[int, tuple]:
        """Entries for the characters whose combining marks NFD puts in canonical order.

        NFD sorts every run of adjacent combining marks by combining class, across character boundaries
        (``x`` + U+1D16D (class 226) + U+1D165 (class 216) -> ``x`` U+1D165 U+1D16D). The fast tokenizer
        runs it on the whole text and re-derives offsets afterwards: walking the output, the first
        character of each decomposition takes the next original character's position and the others
        (``é`` -> ``e`` + U+0301: the U+0301) share the position before, wherever sorting moved them.
        Only text where a mark survives accent stripping comes here, so the common path stays simple.
        """
        slots = []  # (decomposed char or None for a space/CJK barrier, first of its decomposition?)
        sources = []  # the position of each original character, in order
        for i, ch in enumerate(text, base):
            if _is_removed(ch):
                continue  # cleaned away before NFD: the marks on both sides become neighbours
            sources.append(i)
            if _is_whitespace(ch) or (self.tokenize_chinese_chars and _is_cjk(ch)):
                slots.append((None, True))
            else:
                slots += [(c, k == 0) for k, c in enumerate(self._decompose(ch))]
        j = 0
        while j < len(slots):
            k = j
            while k < len(slots) and slots[k][0] is not None and _combining_class(slots[k][0]):
                k += 1
            slots[j:k] = sorted(slots[j:k], key=lambda slot: _combining_class(slot[0]))  # stable
            j = max(k, j + 1)
        overrides: dict[int, list] = {}
        next_source, position = iter(sources), sources[0] if sources else base
        for c, first in slots:
            if first:
                position = next(next_source)
            if c is not None:
                overrides.setdefault(position, []).extend(self._finish(c))
            else:
                overrides.setdefault(position, None)
        return {i: tuple(entries) for i, entries in overrides.items() if entries is not None}


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
            if len(self._cache) >= _WORDPIECE_CACHE_SIZE:
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


class BatchEncoding(dict):
    """The result of ``BertTokenizer.__call__``: a dict (``enc["input_ids"]``) that also allows ``enc.input_ids``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _check_text(text, what="text"):
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}; to tokenize several texts pass a "
                        "list of str to BertTokenizer.__call__")
    return text


def _windows(n: int, keep: int, stride: int) -> list[tuple[int, int]]:
    """Spans ``[start, stop)`` of a sequence of ``n`` tokens cut to ``keep`` tokens; later ones overflow.

    Consecutive windows overlap by ``stride`` tokens, so a SQuAD answer cut by one window boundary lies
    whole inside the next window. ``keep == 0`` keeps nothing and moves the whole sequence to overflow
    (as the fast tokenizer does).
    """
    if keep >= n:
        return [(0, n)]
    if keep == 0:
        return [(0, 0), (0, n)]
    if stride >= keep:
        raise ValueError(f"stride ({stride}) must be smaller than the number of tokens kept per window "
                         f"({keep}, i.e. max_length minus the special tokens); lower stride or raise max_length")
    spans, start = [], 0
    while True:
        stop = min(start + keep, n)
        spans.append((start, stop))
        if stop == n:
            return spans
        start += keep - stride


def _kept_lengths(n_a: int, n_b, budget: int, strategy: str):
    """How many tokens of the first (and second) sequence the first window keeps (the fast tokenizer's rule)."""
    total = n_a + (n_b or 0)
    if total <= budget:
        return n_a, n_b
    to_remove = total - budget
    if strategy == "longest_first":
        if n_b is None:
            return budget, None
        # Keep the shorter one whole when the longer one can absorb the cut; else split the budget evenly
        # (the longer sequence gets the odd token).
        short, long_ = sorted((n_a, n_b))
        long_ = short if short > budget else max(short, budget - short)
        if short + long_ > budget:
            short, long_ = budget // 2, budget // 2 + budget % 2
        return (long_, short) if n_a > n_b else (short, long_)
    if strategy == "only_second" and n_b is None:
        raise ValueError("truncation='only_second' needs a text_pair; use 'only_first' or 'longest_first'")
    target = n_a if strategy == "only_first" else n_b
    if target <= to_remove:
        raise ValueError(f"truncation={strategy!r} cannot fit the input into max_length: that sequence has "
                         f"{target} tokens but {to_remove} must go; use truncation='longest_first'")
    return (n_a - to_remove, n_b) if strategy == "only_first" else (n_a, n_b - to_remove)


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
            config = _read_json(config_path)
            options = {k: config[k] for k in ("do_lower_case", "tokenize_chinese_chars", "strip_accents")
                       if k in config}
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
            options.update(json_options)
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
        return [self.ids_to_tokens[i] for i in self._encode_text(_check_text(text))[0]]

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
        if len(self._pieces_cache) >= _WORDPIECE_CACHE_SIZE:
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

    # ---- the model-input builder --------------------------------------------------------------------

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
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not texts:
            raise ValueError("the batch is empty: pass at least one text")
        if text_pair == "":
            text_pair = None  # as in HF: a single empty pair is no pair (in a batch, "" stays a pair)
        if text_pair is None:
            pairs = [None] * len(texts)
        elif batched != isinstance(text_pair, (list, tuple)) or (batched and len(text_pair) != len(texts)):
            raise TypeError("text_pair must match text: a str for a str, a list of the same length for a list")
        else:
            pairs = list(text_pair) if batched else [text_pair]
        for i, (a, b) in enumerate(zip(texts, pairs)):
            _check_text(a, f"text[{i}]" if batched else "text")
            if b is not None:
                _check_text(b, f"text_pair[{i}]" if batched else "text_pair")
        padding, truncation = self._check_options(padding, truncation, max_length, stride, return_tensors)

        rows, sample_of_row, longest = [], [], 0
        for index, (a, b) in enumerate(zip(texts, pairs)):
            windows = self._build(a, b, add_special_tokens, truncation, max_length, stride)
            if not return_overflowing_tokens:
                windows = windows[:1]
            rows.extend(windows)
            sample_of_row.extend([index] * len(windows))
            # "longest" means the longest first window, as in the fast tokenizer. An overflow window is
            # never longer, except in the odd pair cut where max_length leaves a single text token.
            longest = max(longest, len(windows[0][0]))
        if padding:
            target = max_length if padding == "max_length" else longest
            rows = [self._pad(row, target) for row in rows]

        names = ["input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping"]
        wanted = [True, True, True, return_special_tokens_mask, return_offsets_mapping]
        out = BatchEncoding()
        for column, (name, want) in enumerate(zip(names, wanted)):
            if want:
                out[name] = [row[column] for row in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = sample_of_row
        elif not batched and return_tensors is None:
            out = BatchEncoding({k: v[0] for k, v in out.items()})
        return _to_tensors(out, return_tensors) if return_tensors else out

    def _check_options(self, padding, truncation, max_length, stride, return_tensors):
        """Validate and canonicalise the options of __call__; return (padding, truncation) strategy names."""
        if padding not in PADDING_STRATEGIES:
            raise ValueError(f"padding must be one of {PADDING_STRATEGIES}, got {padding!r}")
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
        padding = {True: "longest", "do_not_pad": False}.get(padding, padding)
        truncation = {True: "longest_first", "do_not_truncate": False}.get(truncation, truncation)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("truncation and padding='max_length' need max_length")
        if not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if truncation and stride > max_length - 2:  # the fast tokenizer's own up-front check
            raise ValueError(f"stride ({stride}) must be at most max_length - 2 ({max_length - 2}): the windows "
                             "must move forward by at least one token; lower stride or raise max_length")
        if padding and self.pad_token_id is None:
            raise ValueError("padding needs [PAD] in the vocabulary")
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
        return padding, truncation

    def _build(self, text, text_pair, add_special_tokens, truncation, max_length, stride) -> list[tuple]:
        """One input -> its windows, each ``(ids, type_ids, mask, special_mask, offsets)``; the first is the
        main row, the others overflow (ordered as the fast tokenizer orders them)."""
        ids_a, off_a = self._encode_text(text)
        ids_b, off_b = self._encode_text(text_pair) if text_pair is not None else (None, None)
        n_b = None if ids_b is None else len(ids_b)
        if truncation:
            n_special = (3 if ids_b is not None else 2) if add_special_tokens else 0
            budget = max_length - n_special
            if budget < 1:
                raise ValueError(f"max_length={max_length} leaves no room for text next to the {n_special} "
                                 f"special tokens; use max_length >= {n_special + 1}")
            keep_a, keep_b = _kept_lengths(len(ids_a), n_b, budget, truncation)
            windows_a = _windows(len(ids_a), keep_a, stride)
            windows_b = _windows(n_b, keep_b, stride) if ids_b is not None else [None]
        else:
            windows_a, windows_b = [(0, len(ids_a))], [None if ids_b is None else (0, n_b)]
        # Fast-tokenizer order: (a0, b0), then each later a-window with b0 and every later b-window,
        # then a0 with each later b-window.
        combos = [(windows_a[0], windows_b[0])]
        for wa in windows_a[1:]:
            combos += [(wa, windows_b[0])] + [(wa, wb) for wb in windows_b[1:]]
        combos += [(windows_a[0], wb) for wb in windows_b[1:]]
        return [self._assemble(ids_a, off_a, wa, ids_b, off_b, wb, add_special_tokens) for wa, wb in combos]

    def _assemble(self, ids_a, off_a, wa, ids_b, off_b, wb, add_special_tokens) -> tuple:
        """``[CLS] A [SEP] B [SEP]`` for one window, with all the per-token columns."""
        cls, sep, none = self.vocab[CLS_TOKEN], self.vocab[SEP_TOKEN], (0, 0)
        a_ids, a_off = ids_a[wa[0]:wa[1]], off_a[wa[0]:wa[1]]
        if add_special_tokens:
            ids, offsets = [cls] + a_ids + [sep], [none] + a_off + [none]
            special = [1] + [0] * len(a_ids) + [1]
        else:
            ids, offsets, special = list(a_ids), list(a_off), [0] * len(a_ids)
        n_first = len(ids)
        if wb is not None:
            b_ids, b_off = ids_b[wb[0]:wb[1]], off_b[wb[0]:wb[1]]
            ids += b_ids + ([sep] if add_special_tokens else [])
            offsets += b_off + ([none] if add_special_tokens else [])
            special += [0] * len(b_ids) + ([1] if add_special_tokens else [])
        type_ids = [0] * n_first + [1] * (len(ids) - n_first)
        return ids, type_ids, [1] * len(ids), special, offsets

    def _pad(self, row: tuple, target: int) -> tuple:
        """Append padding up to ``target`` tokens (rows already that long are returned unchanged)."""
        n = target - len(row[0])
        if n <= 0:
            return row
        ids, type_ids, mask, special, offsets = row
        return (ids + [self.pad_token_id] * n, type_ids + [0] * n, mask + [0] * n, special + [1] * n,
                offsets + [(0, 0)] * n)


def _cleanup(token: str) -> str:
    """HF's WordPiece-decoder clean-up: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        token = token.replace(before, after)
    return token


def _to_tensors(out: BatchEncoding, kind: str) -> BatchEncoding:
    """Lists of equal-length rows -> int64 arrays ``[batch, seq]`` (offsets ``[batch, seq, 2]``)."""
    import numpy as np

    rows = out["input_ids"]
    if not isinstance(rows[0], list):
        out = BatchEncoding({k: [v] for k, v in out.items()})  # a single text becomes a batch of one
        rows = out["input_ids"]
    if len({len(r) for r in rows}) > 1:
        raise ValueError("sequences have different lengths, so they cannot form one tensor; "
                         "pass padding=True (or truncation with padding='max_length')")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    if kind == "pt":
        import torch
        arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return BatchEncoding(arrays)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} is not valid UTF-8 JSON: {e}") from None


def _read_tokenizer_json(path: str) -> tuple[dict, dict]:
    """An HF ``tokenizer.json`` holding a WordPiece model -> (vocab, BertTokenizer options)."""
    data = _read_json(path)
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


# ---- show your work --------------------------------------------------------------------------------


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
        from minibert.vocab import default_vocab_dir  # trains (once, then cached) on the built-in corpus
        args.vocab = default_vocab_dir()
    overrides = {"do_lower_case": False} if args.cased else {}
    tokenizer = BertTokenizer.from_pretrained(args.vocab, **overrides)
    print(show_work(tokenizer, args.text, args.pair))
    return 0


if __name__ == "__main__":
    sys.exit(main())
