"""WordPiece training: the merge criterion by hand, against a brute-force trainer, and against HF."""
import os
import random
from collections import Counter

import pytest

from minibert import corpus, vocab
from minibert.tokenizer import SPECIAL_TOKENS, BasicTokenizer, BertTokenizer, WordpieceTokenizer

# A small English corpus with enough distinct words for a few hundred merges.
_WORDS = ("the a of to in is it that for on with as was by at be this from or an are which one have "
          "token tokens tokenizer tokenize tokenized tokenizing piece pieces word words wordpiece vocabulary "
          "merge merged merges merging pair pairs count counts counting score scores likelihood unigram "
          "model models modeling train trains trained training text texts sentence sentences corpus "
          "document documents read reads reading write writes written writing learn learns learned "
          "character characters split splits splitting play plays played playing player players "
          "unaffable affable able ably run runs running runner quick quickly slow slowly").split()


def _documents(rng, n_docs, n_sentences=6, extra_chars=""):
    """Random documents of Zipf-ish English words, optionally sprinkled with extra characters."""
    weights = [1 / (i + 1) for i in range(len(_WORDS))]
    docs = []
    for _ in range(n_docs):
        doc = []
        for _ in range(n_sentences):
            words = rng.choices(_WORDS, weights, k=rng.randint(4, 12))
            if extra_chars and rng.random() < 0.3:
                words.append(rng.choice(_WORDS) + rng.choice(extra_chars))
            doc.append(" ".join(words).capitalize() + rng.choice(".?!"))
        docs.append(doc)
    return docs


def _brute_force_wordpiece(word_counts, vocab_size, min_frequency):
    """The textbook algorithm, recounting everything before every merge (slow but obviously right)."""
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in word_counts}
    learned = list(SPECIAL_TOKENS) + sorted({p[0] for p in words.values()}) + \
        sorted({q for p in words.values() for q in p[1:]})
    while len(learned) < vocab_size:
        pieces, pairs = Counter(), Counter()
        for w, p in words.items():
            for q in p:
                pieces[q] += word_counts[w]
            for pair in zip(p, p[1:]):
                pairs[pair] += word_counts[w]
        candidates = [(-n / (pieces[a] * pieces[b]), -n, a, b) for (a, b), n in pairs.items()
                      if n >= min_frequency]
        _, _, a, b = min(candidates)
        for w, p in words.items():
            merged, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == (a, b):
                    merged.append(a + b[2:])
                    i += 2
                else:
                    merged.append(p[i])
                    i += 1
            words[w] = merged
        if a + b[2:] not in learned:
            learned.append(a + b[2:])
    return learned


def test_first_merges_by_hand():
    # The pieces are h ##u ##g (x10), p ##u ##g (x5), p ##u ##n (x12), b ##u ##n (x4), h ##u ##g ##s (x5).
    # Piece counts: h 15, p 17, b 4, ##u 36, ##g 20, ##n 16, ##s 5.
    # Merge 1: ("##g", "##s") scores 5 / (20 * 5) = 0.05; every other pair scores <= 1/36 ~ 0.028.
    # After it, ##g 15 and ##gs 5, and all six pairs score exactly 1/36, e.g. (h, ##u) = 15 / (15 * 36).
    # The tie goes to the most frequent pair, ("p", "##u") with 17: merge 2 -> "pu".
    # Then ##u 19 and (h, ##u) = 15 / (15 * 19) = 1/19 ties with (##u, ##gs) = 5 / (19 * 5) and
    # (b, ##u) = 4 / (4 * 19); (pu, ##n) = 12 / (17 * 16) ~ 0.044 < 1/19. The most frequent wins: "hu".
    word_counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    learned = vocab.train_wordpiece(word_counts, vocab_size=15, min_frequency=1)
    assert learned == list(SPECIAL_TOKENS) + ["b", "h", "p", "##g", "##n", "##s", "##u", "##gs", "pu", "hu"]
    # min_frequency=6 forbids ("##g", "##s") (seen 5 times) and (b, ##u) (4). The rest all score 1/36:
    # (h, ##u) 15, (p, ##u) 17, (##u, ##n) 16 and (##u, ##g) = 20 / (36 * 20), the most frequent: "##ug".
    # Now ##u is 16: (##u, ##n) = 16 / (16 * 16) = 0.0625 beats (h, ##ug) = 15 / (15 * 20) = 0.05 and
    # (p, ##u) = 12 / (17 * 16) ~ 0.044: "##un". Then (h, ##ug) = 0.05 beats (p, ##un) ~ 0.044: "hug".
    learned = vocab.train_wordpiece(word_counts, vocab_size=15, min_frequency=6)
    assert learned[12:] == ["##ug", "##un", "hug"]


@pytest.mark.parametrize("min_frequency", [1, 3])
def test_matches_brute_force_trainer_on_random_corpora(min_frequency):
    rng = random.Random()
    for _ in range(3):
        word_counts = {"".join(rng.choices("abcde", k=rng.randint(1, 6))): rng.randint(1, 30) for _ in range(40)}
        alphabet_size = len(SPECIAL_TOKENS) + len({w[0] for w in word_counts}) + \
            len({c for w in word_counts for c in w[1:]})
        size = alphabet_size + 25
        expected = _brute_force_wordpiece(word_counts, size, min_frequency)
        assert vocab.train_wordpiece(word_counts, vocab_size=size, min_frequency=min_frequency) == expected


def test_count_words_matches_basic_tokenizer_on_whole_sentences():
    # count_words tokenizes each space-separated chunk once; that must equal tokenizing whole sentences.
    rng = random.Random()
    parts = ["Héllo", "WORLD", "[MASK]", "a[SEP]b", "日本語", "tab\there", "nb\u00a0sp", "ctl\x07x", "x.y,z!",
             "don't", "Ωmega", "\u200bzero", "", "3.14"]
    documents = [[" ".join(rng.choices(parts, k=rng.randint(1, 9))) for _ in range(5)] for _ in range(20)]
    for do_lower_case in (True, False):
        basic = BasicTokenizer(do_lower_case=do_lower_case, never_split=SPECIAL_TOKENS)
        expected = Counter(w for doc in documents for s in doc for w in basic.tokenize(s)
                           if w not in SPECIAL_TOKENS)
        assert vocab.count_words(documents, do_lower_case) == expected


def test_deterministic_exact_size_and_specials_first():
    documents = _documents(random.Random(), 60)
    learned = vocab.train_wordpiece(documents, vocab_size=300)
    assert len(learned) == 300 and len(set(learned)) == 300
    assert learned[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not any(t in SPECIAL_TOKENS for t in learned[5:])
    # Same text in another order (documents, and sentences within them) gives the same vocabulary.
    shuffled = [list(reversed(doc)) for doc in reversed(documents)]
    assert vocab.train_wordpiece(shuffled, vocab_size=300) == learned
    assert vocab.train_wordpiece(vocab.count_words(documents), vocab_size=300) == learned


def test_every_training_word_tokenizes_without_unk():
    documents = _documents(random.Random(), 40, extra_chars="éßø日本-")
    for do_lower_case in (True, False):
        learned = vocab.train_wordpiece(documents, vocab_size=200, do_lower_case=do_lower_case)
        if not do_lower_case:
            assert "T" in learned  # sentences are capitalized, and case is kept
        wordpiece = WordpieceTokenizer({t: i for i, t in enumerate(learned)})
        words = vocab.count_words(documents, do_lower_case)
        assert all("[UNK]" not in wordpiece.tokenize(w) for w in words)


def test_limit_alphabet_drops_rare_characters_to_unk():
    documents = _documents(random.Random(), 30) + [["Zebra quizzes jive xylophone zeal."]]
    words = vocab.count_words(documents)
    chars = Counter(c for w, n in words.items() for c in w for _ in range(n))
    rare = min(chars, key=lambda c: (chars[c], c))
    learned = vocab.train_wordpiece(documents, vocab_size=150, limit_alphabet=len(chars) - 1, min_frequency=1)
    assert rare not in learned and "##" + rare not in learned
    wordpiece = WordpieceTokenizer({t: i for i, t in enumerate(learned)})
    for word in words:
        assert (wordpiece.tokenize(word) == ["[UNK]"]) == (rare in word), word


def test_errors():
    with pytest.raises(ValueError, match="no words"):
        vocab.train_wordpiece([[" ", "\t"]], vocab_size=100)
    with pytest.raises(ValueError, match="no words"):
        vocab.train_wordpiece({}, vocab_size=100)
    documents = _documents(random.Random(), 5)
    with pytest.raises(ValueError, match="cannot hold the 5 special tokens"):
        vocab.train_wordpiece(documents, vocab_size=20)
    with pytest.raises(ValueError, match="only supports a vocabulary of"):
        vocab.train_wordpiece(documents, vocab_size=100_000)
    with pytest.raises(ValueError, match="must be >= 1"):
        vocab.train_wordpiece(documents, vocab_size=100, min_frequency=0)


def test_tokenization_stats_counts_words_tokens_and_unks():
    documents = [["Playing unaffable games.", "Zzz!"]]
    pieces = {"Playing": ["play", "##ing"], "unaffable": ["un", "##aff", "##able"], "games": ["[UNK]"]}
    stats = vocab.tokenization_stats(lambda s: [p for w in s.split() for p in pieces.get(w.strip(".!"), ["x"])]
                                     + ["."] * s.count("."), documents)
    # Words (BasicTokenizer): playing, unaffable, games, ".", zzz, "!" = 6; tokens: 2 + 3 + 1 + 1 + 1 = 8.
    assert stats == {"words": 6, "tokens": 8, "tokens_per_word": 8 / 6, "unk_rate": 1 / 6}


def test_trained_vocab_matches_hf_bert_tokenizer_fast(tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = random.Random()
    documents = _documents(rng, 50, extra_chars="éüß日本-'")
    corpus.write_corpus(documents, tmp_path / "corpus.txt")
    for do_lower_case in (True, False):
        out = tmp_path / f"vocab-{do_lower_case}"
        ours = vocab.train_vocab([str(tmp_path / "corpus.txt")], 250, out, do_lower_case=do_lower_case)
        assert len(ours) == 250
        assert (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:5] == list(SPECIAL_TOKENS)
        hf = transformers.BertTokenizerFast.from_pretrained(str(out))
        assert len(hf) == 250
        held_out = [s for doc in corpus.held_out_split(documents, held_out=True) for s in doc]
        held_out += ["Unseen WORDS: naïve café, Ωmega 3.14 [MASK] tokenizers!", "日本語 text ⅷ"]
        for sentence in held_out:
            assert ours.tokenize(sentence) == hf.tokenize(sentence), sentence
            assert ours(sentence)["input_ids"] == hf(sentence)["input_ids"], sentence


def test_train_vocab_holds_out_every_tenth_document(tmp_path):
    # Documents 10, 20, 30 alone use the letter "j" (no word of _WORDS has one).
    documents = _documents(random.Random(), 30)
    for i in (9, 19, 29):
        documents[i] = ["Jejune jokes jar."] * 3
    corpus.write_corpus(documents, tmp_path / "c.txt")
    tok = vocab.train_vocab(str(tmp_path / "c.txt"), 200, tmp_path / "v", min_frequency=1)
    assert "j" not in tok.vocab and tok.tokenize("jokes") == ["[UNK]"]
    tok = vocab.train_vocab(str(tmp_path / "c.txt"), 200, tmp_path / "v2", min_frequency=1, held_out_every=None)
    assert "j" in tok.vocab and "[UNK]" not in tok.tokenize("jokes")


@pytest.mark.slow
def test_default_vocab_dir_trains_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path))
    directory = vocab.default_vocab_dir(vocab_size=1000)
    name = os.path.basename(directory)
    assert os.path.dirname(directory) == str(tmp_path) and name.startswith("vocab-builtin-1000-")
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary folder left behind
    tok = BertTokenizer.from_pretrained(directory)
    assert len(tok) == 1000 and tok.tokenize("The return value.") != ["[UNK]"] * 4
    mtime = os.path.getmtime(os.path.join(directory, "vocab.txt"))
    assert vocab.default_vocab_dir(vocab_size=1000) == directory
    assert os.path.getmtime(os.path.join(directory, "vocab.txt")) == mtime  # reused, not retrained
