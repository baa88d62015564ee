"""The character classes behind BERT's text cleaning and splitting, and the Unicode tables they need.

BasicTokenizer asks five questions of every character: is it removed by cleaning, is it whitespace, is it
punctuation, is it a CJK ideograph, is it a non-spacing mark (an accent to strip); plus, for the rare
text where a combining mark survives, its canonical combining class, and how it lower-cases and
decomposes (NFD). The answers must be the fast (Rust) tokenizer's, which is what ``transformers`` uses by
default, and they differ from Python's ``unicodedata`` in three places:

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
* **Control characters.** Google drops Cc and Cf; HF's Python tokenizer (``BertTokenizerLegacy``) drops
  every C* category, unassigned code points included; the fast one drops Cc, Cf (Unicode 8.0) and Co.
  (All three split on ``U+2028``/``U+2029``: Google's and the legacy one through Python's ``str.split``.)

``tests/test_tokenizer_conformance.py`` checks every function here against ``tokenizers`` on every
Unicode code point.
"""
from __future__ import annotations

import string
import unicodedata

# CJK ideographs are written without spaces, so BERT splits them one per token (a character-level model
# for Chinese/Japanese kanji). These are the "CJK Unified Ideographs" blocks and their extensions; the
# sixth range starts at U+2B920 in the fast tokenizer (U+2B820 in Google's code), see the module docstring.
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


# Every printable ASCII non-alphanumeric is punctuation to BERT, "$", "^" and "`" included (they are
# symbols, S*, to Unicode).
_ASCII_PUNCT = frozenset(string.punctuation)


def is_removed(ch: str) -> bool:
    """True for characters text cleaning drops: NUL, U+FFFD, controls (not \\t\\n\\r), format, private use."""
    if ch in "\t\n\r":
        return False
    cp = ord(ch)
    cat = unicodedata.category(ch)
    return (cp == 0 or cp == 0xFFFD or cat in ("Cc", "Co", "Cs")
            or (cat == "Cf" and cp not in _FAST_KEPT_FORMAT))


def is_whitespace(ch: str) -> bool:
    """Unicode White_Space as Rust sees it (Python's isspace also counts the controls U+001C..U+001F)."""
    return ch.isspace() and not "\x1c" <= ch <= "\x1f"


def is_punctuation(ch: str) -> bool:
    """ASCII non-alphanumerics and Unicode P* (Unicode 8.0 tables, as in the fast tokenizer)."""
    if ch in _ASCII_PUNCT:
        return True
    cp = ord(ch)
    if cp in _FAST_EXTRA_PUNCT:
        return True
    return unicodedata.category(ch).startswith("P") and cp not in _FAST_NOT_PUNCT


def is_nonspacing_mark(ch: str) -> bool:
    """Category Mn (accents and other combining marks drawn on top of a letter), Unicode 8.0 tables."""
    cp = ord(ch)
    if cp in _FAST_EXTRA_MN:
        return True
    return unicodedata.category(ch) == "Mn" and cp not in _FAST_NOT_MN


def combining_class(ch: str) -> int:
    """Canonical combining class (0 for letters; marks sort by it in NFD), as the fast tokenizer knows it."""
    return 0 if ord(ch) in _FAST_NOT_COMBINING else unicodedata.combining(ch)


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (see _CJK_RANGES)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def nfd(ch: str) -> str:
    """The canonical decomposition (NFD) of one character, as the fast tokenizer's tables know it."""
    return ch if ch in _FAST_NOT_DECOMPOSED else unicodedata.normalize("NFD", ch)


def lower(ch: str) -> str:
    """One character lower-cased as Rust does: per character, so no final-sigma rule (``Σ`` -> ``σ``)."""
    return _NEWER_LOWERCASE.get(ch) or ch.lower()
