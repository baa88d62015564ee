"""Seeded random strings for tokenizer tests: every kind of character BERT's tokenizer treats specially.

Shared by ``tests/test_tokenizer_conformance.py`` (flags, truncation, pairs, decode) and the fuzzer in
``tests/fuzz/test_tokenizer_fuzz.py`` (many more strings, one call each).
"""
import random

from minibert.tokenizer import SPECIAL_TOKENS

ASCII_WORDS = ("the quick brown fox jumps over lazy dog running unaffable playing token tokenizer bert "
               "model attention layer hidden state embedding vocabulary sentence question answer context "
               "paris london learning machine neural network deep pretraining masked language next "
               "don't it's we're i'm they've 1984 3.14 42 2nd http www example com").split()
ACCENTED = "éèêëÉÈàáâäÀÁÂÄñÑçÇüÜöÖøØåÅßæÆœŒłŁıİşŞğĞčČžŽ" + "e\u0301a\u0300o\u0308" + "ΑΣΣαςσΩωДжЯя" + "ﬁﬀǅ"
PUNCT = ".,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`" + "“”‘’«»¿¡—–…、。，！？・·" + "\u037e\u0387"
CJK = ("中国人你好世界日本語東京北京漢字学生大小上下" + "\u3400\u4dbf\u9fff\uf900\ufa6a"
       + "\U00020000\U0002a6df\U0002b740\U0002b820\U0002b91f\U0002b920\U0002ceaf\U0002f800")
EMOJI = ("😀🙂👍🏽❤️🎉🚀🤖🥰🧪🫠" + "👨\u200d👩\u200d👧" + "\u2764\ufe0f" + "🇫🇷")
CONTROL = "\x00\x01\x07\x08\x0b\x0c\x1b\x1c\x1f\x7f\x85\u200b\u200d\ufeff\ufffd\u2060\ue000\U000f0000\u0378"
SPACES = " \t\n\r\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000"
MARK_RANGES = (range(0x300, 0x370), range(0x591, 0x5C8), range(0x1AB0, 0x1ACF), range(0x1DC0, 0x1E00),
               range(0x1D165, 0x1D16E), range(0x8CA, 0x8E2))
SPECIAL_IN_TEXT = list(SPECIAL_TOKENS) + ["[mask]", "[MASK", "MASK]", "[[MASK]]", "[MASK][SEP]"]


def build_vocab(path):
    """A few thousand tokens: specials, characters (+ ``##`` forms), words and subwords; written to ``path``."""
    rng = random.Random(1234)
    tokens = list(SPECIAL_TOKENS) + [f"[unused{i}]" for i in range(5)]
    chars = set(map(chr, range(33, 127))) | set(ACCENTED + PUNCT + CJK.replace("\U0002b820", "") + "😀🚀")
    chars |= set(ACCENTED.lower()) | set("aeiouyσςи")
    chars |= set("\U0001d165\U0001d16d")  # musical combining marks: survive accent stripping, get reordered
    chars = sorted(c for c in chars if c.isprintable() and not c.isspace())
    tokens += chars + ["##" + c for c in chars if c.isalnum()]
    words = set()
    for w in ASCII_WORDS:
        words |= {w, w.lower(), w.capitalize()}
        words |= {w[:k] for k in range(2, len(w))} | {"##" + w[k:] for k in range(1, len(w) - 1)}
    for _ in range(1500):  # random subwords, so the greedy search has real choices to make
        n = rng.randint(2, 6)
        s = "".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(n))
        words.add(s if rng.random() < 0.5 else "##" + s)
    words |= {"café", "##é", "naïve", "über", "straße", "ασ", "##ς"}
    tokens += sorted(w for w in words if w not in set(tokens))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return len(tokens)


def random_text(rng: random.Random) -> str:
    """One random string mixing every kind of character the tokenizer treats specially."""
    parts = []
    for _ in range(rng.randint(0, 25)):
        r = rng.random()
        if r < 0.30:
            w = rng.choice(ASCII_WORDS)
            parts.append(w.upper() if rng.random() < 0.2 else w.capitalize() if rng.random() < 0.3 else w)
        elif r < 0.38:
            parts.append("".join(rng.choice(ACCENTED + "abcxyz") for _ in range(rng.randint(1, 8))))
        elif r < 0.48:
            parts.append(rng.choice(PUNCT) * rng.randint(1, 2))
        elif r < 0.56:
            parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 4))))
        elif r < 0.61:
            parts.append(rng.choice(EMOJI))
        elif r < 0.67:
            parts.append(rng.choice(CONTROL))
        elif r < 0.72:
            parts.append(rng.choice(SPECIAL_IN_TEXT))
        elif r < 0.75:  # very long words, around the 100-character limit
            parts.append("".join(rng.choice("abcdeé") for _ in range(rng.choice((99, 100, 101, 150)))))
        elif r < 0.76:  # runs of combining marks, old and new (NFD sorts them; stripping drops some)
            parts.append("".join(chr(rng.choice(rng.choice(MARK_RANGES))) for _ in range(rng.randint(1, 3))))
        elif r < 0.78:  # any code point at all (surrogates excepted: not valid in the Rust tokenizer)
            cp = rng.randrange(0x110000)
            parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
        else:
            parts.append(rng.choice(SPACES))
        parts.append("" if rng.random() < 0.3 else rng.choice(SPACES[:3]))
    return "".join(parts)


HAND_PICKED = [
    "", " ", "\x00", "[MASK]", "[MASK][MASK]", "a[MASK]b", "[mask]", "[UNK]x", "x" * 100, "x" * 101,
    "İstanbul", "ΑΣ ΟΔΟΣ", "ﬁne ǅ", "e\u0301 \u0301 a\u0301\u0301b", "straße", "\u037e\u0387",
    "\U0002b81f\U0002b820\U0002b91f\U0002b920", "\uf900\ufa6a", "a\u2028b\u2029c\x85d\x1ce\x0bf",
    "👨\u200d👩\u200d👧 \u2764\ufe0f", "tab\tnew\nline\rreturn", "\ufeffbom", "a\ue000b",
    # NFD sorts combining marks across characters; offsets follow the fast tokenizer's rule
    "x\U0001d16d\U0001d165 y", "x\U0001d16d\u0301\U0001d165x", "x\U0001d16d\x00\U0001d165x",
    "é\U0001d16d\u0316\U0001d165 \u0301x\U0001d16d", "ǘ\U0001d16d\u0316\U0001d165\u0301x",
    "中\U0001d16d\U0001d165\u0301", "x\U0001d16d[MASK]\U0001d165", "l\u1ac9\u1ab9 l\u1ab9\u1ac9",
]
