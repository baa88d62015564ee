"""Stage 1 of BERT tokenization: the BasicTokenizer cleans text and splits it into words and punctuation.

It drops NUL, U+FFFD and control/format characters, turns every kind of whitespace into a space, puts each
CJK ideograph in a token of its own, lower-cases and strips accents (NFD, then drop the non-spacing
marks, category Mn), and splits on whitespace and punctuation. Special tokens written in the text
(``[MASK]``) are cut out first and kept whole. For each character it produces it tracks the index of the
original character it came from, so offsets survive removed control characters, ``é -> e`` and
``İ -> i̇`` (one character becoming two). The character classes themselves live in
``minibert.tokenizer.unicode_tables``.

Where the well-known implementations disagree on what this stage does, we follow the fast (Rust) one:

* **Lower-casing is per character.** ``"ΑΣ".lower()`` is ``"ας"`` in Python (final sigma) but the fast
  tokenizer lower-cases character by character and gives ``"ασ"``; so do we.
* **Order of accent stripping and lower-casing.** The fast tokenizer strips accents, then lower-cases; the
  original lower-cases, then strips. No single character of Unicode 14 comes out differently.
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

import re

from minibert.tokenizer.unicode_tables import (combining_class, is_cjk, is_nonspacing_mark, is_punctuation,
                                               is_removed, is_whitespace, lower, nfd)

# What one character of normalized text does in the pre-tokenizer.
_WORD, _ISOLATED, _SPACE, _MARK = 0, 1, 2, 3  # _MARK: a word character that is a combining mark
# ASCII text without control characters takes a regex fast path: words are runs of letters and digits,
# every other printable character is punctuation (BERT counts "$", "^", "`" etc. as punctuation too).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


def check_text(text, what="text") -> str:
    """``text`` itself when it is a ``str``; a clear TypeError (naming it ``what``) otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}; to tokenize several texts pass a "
                        "list of str to BertTokenizer.__call__")
    return text


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
        return [token for token, _, _, _ in self._words(check_text(text))]

    def tokenize_with_offsets(self, text: str) -> list[tuple[str, int, int]]:
        """Like :meth:`tokenize`, with each token's ``(start, end)`` span in the original ``text``."""
        return [(token, start, end) for token, start, end, _ in self._words(check_text(text))]

    def normalize(self, text: str) -> str:
        """The cleaned, lower-cased, accent-stripped text, CJK ideographs padded with spaces (for display);
        never_split tokens are left as written."""
        text, parts, start = check_text(text), [], 0
        matches = self._never_split_re.finditer(text) if self._never_split_re else ()
        for end, match in [(m.start(), m) for m in matches] + [(len(text), None)]:
            for ch in text[start:end]:
                for piece, kind in self._char_entries(ch):
                    cjk = kind == _ISOLATED and self.tokenize_chinese_chars and is_cjk(ch)
                    parts.append(f" {piece} " if cjk else piece)
            if match is not None:
                parts.append(match.group())
                start = match.end()
        return "".join(parts)

    def _char_entries(self, ch: str) -> tuple:
        """What one original character becomes: a tuple of ``(normalized_char, kind)`` (cached)."""
        entries = self._char_cache.get(ch)
        if entries is None:
            if is_removed(ch):
                entries = ()
            elif is_whitespace(ch):
                entries = ((" ", _SPACE),)
            elif self.tokenize_chinese_chars and is_cjk(ch):
                entries = tuple((c, _ISOLATED) for c, _ in self._finish(self._decompose(ch)))
            else:
                entries = self._finish(self._decompose(ch))
            self._char_cache[ch] = entries
        return entries

    def _decompose(self, ch: str) -> str:
        """NFD of ``ch`` when stripping accents (accents become separate combining marks), else ``ch``."""
        return nfd(ch) if self.strip_accents else ch

    def _finish(self, chars: str) -> tuple:
        """Decomposed characters -> ``((char, kind), ...)``: drop accents, lower-case, classify."""
        if self.strip_accents:
            chars = "".join(c for c in chars if not is_nonspacing_mark(c))
        if self.do_lower_case:
            chars = "".join(map(lower, chars))  # per character: no final-sigma rule
        entries = []
        for c in chars:
            if is_whitespace(c):
                kind = _SPACE
            elif is_punctuation(c):
                kind = _ISOLATED
            else:  # a combining mark that survives accent stripping may need reordering, see _reordered
                kind = _MARK if self.strip_accents and combining_class(c) else _WORD
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
            if is_removed(ch):
                continue  # cleaned away before NFD: the marks on both sides become neighbours
            sources.append(i)
            if is_whitespace(ch) or (self.tokenize_chinese_chars and is_cjk(ch)):
                slots.append((None, True))
            else:
                slots += [(c, k == 0) for k, c in enumerate(self._decompose(ch))]
        j = 0
        while j < len(slots):
            k = j
            while k < len(slots) and slots[k][0] is not None and combining_class(slots[k][0]):
                k += 1
            slots[j:k] = sorted(slots[j:k], key=lambda slot: combining_class(slot[0]))  # stable
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
