"""WordPiece training: the merge criterion by hand, against a brute-force trainer, and against HF."""
import math
import os
import random
from collections import Counter

import pytest

from minibert.data import corpus
from minibert.tokenizer import train as vocab_trainer
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


def _brute_force_wordpiece(word_counts, vocab_size, min_frequency, criterion):
    """The textbook algorithm, recounting everything and rescoring every pair before every merge."""
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
        total = sum(pieces.values())  # N, the number of pieces in the text
        if criterion == "ratio":
            scores = {(a, b): n / (pieces[a] * pieces[b]) for (a, b), n in pairs.items()}
        else:  # count(ab) * log(N * count(ab) / (count(a) * count(b)))
            scores = {(a, b): n * math.log(n * total / (pieces[a] * pieces[b])) for (a, b), n in pairs.items()}
        candidates = [(-scores[a, b], -n, a, b) for (a, b), n in pairs.items() if n >= min_frequency]
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


_HUG_WORDS = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}


def test_first_merges_by_hand_likelihood():
    # The pieces are h ##u ##g (x10), p ##u ##g (x5), p ##u ##n (x12), b ##u ##n (x4), h ##u ##g ##s (x5).
    # Piece counts: h 15, p 17, b 4, ##u 36, ##g 20, ##n 16, ##s 5; N = 113 pieces in all.
    # score = count(ab) * log(N * count(ab) / (count(a) * count(b))).
    # Merge 1: the pairs with ##u all have count(ab) / (count(a) count(b)) = 1/36, so their score is
    # count(ab) * log(113/36) and the most frequent wins: ("##u", "##g"), 20 * log(113/36) ~ 22.9.
    # ("##g", "##s") scores 5 * log(113 * 5 / (20 * 5)) ~ 8.7: the best ratio, but seen only 5 times.
    # After it: ##u 16, ##ug 20, ##g 0, N = 93. ("##u", "##n") = 16 * log(93 * 16 / (16 * 16)) ~ 28.2
    # beats ("h", "##ug") = 15 * log(93 * 15 / (15 * 20)) ~ 23.0 and ("p", "##u") = 12 * log(93 * 12 /
    # (17 * 16)) ~ 16.9: merge 2 -> "##un".
    # After it: N = 77. ("h", "##ug") was not touched, but N fell, so its score fell to 15 * log(77/20)
    # ~ 20.2 (the heap must re-score it); still the best: ("p", "##un") = 12 * log(77 * 12 / (17 * 16))
    # ~ 14.7. Merge 3 -> "hug". Then N = 62: ("p", "##un") = 12 * log(62 * 12 / (17 * 16)) ~ 12.1 beats
    # ("hug", "##s") = 5 * log(62 * 5 / (15 * 5)) ~ 7.1: merge 4 -> "pun".
    merges = []
    learned = vocab_trainer.train_wordpiece(_HUG_WORDS, vocab_size=16, min_frequency=1,
                                    on_merge=lambda *merge: merges.append(merge))
    assert learned == list(SPECIAL_TOKENS) + ["b", "h", "p", "##g", "##n", "##s", "##u", "##ug", "##un", "hug",
                                              "pun"]
    assert [m[:3] for m in merges] == [("##u", "##g", 20), ("##u", "##n", 16), ("h", "##ug", 15), ("p", "##un", 12)]
    expected = [20 * math.log(113 / 36), 16 * math.log(93 / 16), 15 * math.log(77 / 20),
                12 * math.log(62 * 12 / (17 * 16))]
    assert [m[3] for m in merges] == pytest.approx(expected, rel=1e-12)
    assert vocab_trainer.train_wordpiece(_HUG_WORDS, vocab_size=16, min_frequency=1, criterion="likelihood") == learned


def test_first_merges_by_hand_ratio():
    # The pieces are h ##u ##g (x10), p ##u ##g (x5), p ##u ##n (x12), b ##u ##n (x4), h ##u ##g ##s (x5).
    # Piece counts: h 15, p 17, b 4, ##u 36, ##g 20, ##n 16, ##s 5.
    # Merge 1: ("##g", "##s") scores 5 / (20 * 5) = 0.05; every other pair scores <= 1/36 ~ 0.028.
    # After it, ##g 15 and ##gs 5, and all six pairs score exactly 1/36, e.g. (h, ##u) = 15 / (15 * 36).
    # The tie goes to the most frequent pair, ("p", "##u") with 17: merge 2 -> "pu".
    # Then ##u 19 and (h, ##u) = 15 / (15 * 19) = 1/19 ties with (##u, ##gs) = 5 / (19 * 5) and
    # (b, ##u) = 4 / (4 * 19); (pu, ##n) = 12 / (17 * 16) ~ 0.044 < 1/19. The most frequent wins: "hu".
    word_counts = _HUG_WORDS
    learned = vocab_trainer.train_wordpiece(word_counts, vocab_size=15, min_frequency=1, criterion="ratio")
    assert learned == list(SPECIAL_TOKENS) + ["b", "h", "p", "##g", "##n", "##s", "##u", "##gs", "pu", "hu"]
    # min_frequency=6 forbids ("##g", "##s") (seen 5 times) and (b, ##u) (4). The rest all score 1/36:
    # (h, ##u) 15, (p, ##u) 17, (##u, ##n) 16 and (##u, ##g) = 20 / (36 * 20), the most frequent: "##ug".
    # Now ##u is 16: (##u, ##n) = 16 / (16 * 16) = 0.0625 beats (h, ##ug) = 15 / (15 * 20) = 0.05 and
    # (p, ##u) = 12 / (17 * 16) ~ 0.044: "##un". Then (h, ##ug) = 0.05 beats (p, ##un) ~ 0.044: "hug".
    learned = vocab_trainer.train_wordpiece(word_counts, vocab_size=15, min_frequency=6, criterion="ratio")
    assert learned[12:] == ["##ug", "##un", "hug"]


@pytest.mark.parametrize("criterion", vocab_trainer.CRITERIA)
@pytest.mark.parametrize("min_frequency", [1, 3])
def test_matches_brute_force_trainer_on_random_corpora(min_frequency, criterion):
    # Few letters, so runs ("a ##a ##a") and pieces reached twice ("##abc") are common.
    rng = random.Random()
    for _ in range(4):
        word_counts = {"".join(rng.choices("abcde", k=rng.randint(1, 6))): rng.randint(1, 30) for _ in range(40)}
        alphabet_size = len(SPECIAL_TOKENS) + len({w[0] for w in word_counts}) + \
            len({c for w in word_counts for c in w[1:]})
        size = alphabet_size + 30
        expected = _brute_force_wordpiece(word_counts, size, min_frequency, criterion)
        assert vocab_trainer.train_wordpiece(word_counts, vocab_size=size, min_frequency=min_frequency,
                                     criterion=criterion) == expected


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
        assert vocab_trainer.count_words(documents, do_lower_case) == expected


@pytest.mark.parametrize("criterion", vocab_trainer.CRITERIA)
def test_deterministic_exact_size_and_specials_first(criterion):
    documents = _documents(random.Random(), 60)
    # 230: the likelihood criterion runs out of pairs seen twice at ~250 tokens here (the ratio at ~300).
    learned = vocab_trainer.train_wordpiece(documents, vocab_size=230, criterion=criterion)
    assert len(learned) == 230 and len(set(learned)) == 230
    assert learned[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not any(t in SPECIAL_TOKENS for t in learned[5:])
    # Same text in another order (documents, and sentences within them) gives the same vocabulary.
    shuffled = [list(reversed(doc)) for doc in reversed(documents)]
    assert vocab_trainer.train_wordpiece(shuffled, vocab_size=230, criterion=criterion) == learned
    assert vocab_trainer.train_wordpiece(vocab_trainer.count_words(documents), vocab_size=230, criterion=criterion) == learned


def test_every_training_word_tokenizes_without_unk():
    documents = _documents(random.Random(), 40, extra_chars="éßø日本-")
    for do_lower_case in (True, False):
        learned = vocab_trainer.train_wordpiece(documents, vocab_size=200, do_lower_case=do_lower_case)
        if not do_lower_case:
            assert "T" in learned  # sentences are capitalized, and case is kept
        wordpiece = WordpieceTokenizer({t: i for i, t in enumerate(learned)})
        words = vocab_trainer.count_words(documents, do_lower_case)
        assert all("[UNK]" not in wordpiece.tokenize(w) for w in words)


def test_limit_alphabet_drops_rare_characters_to_unk():
    documents = _documents(random.Random(), 30) + [["Zebra quizzes jive xylophone zeal."]]
    words = vocab_trainer.count_words(documents)
    chars = Counter(c for w, n in words.items() for c in w for _ in range(n))
    rare = min(chars, key=lambda c: (chars[c], c))
    learned = vocab_trainer.train_wordpiece(documents, vocab_size=150, limit_alphabet=len(chars) - 1, min_frequency=1)
    assert rare not in learned and "##" + rare not in learned
    wordpiece = WordpieceTokenizer({t: i for i, t in enumerate(learned)})
    for word in words:
        assert (wordpiece.tokenize(word) == ["[UNK]"]) == (rare in word), word


def test_errors():
    with pytest.raises(ValueError, match="no words"):
        vocab_trainer.train_wordpiece([[" ", "\t"]], vocab_size=100)
    with pytest.raises(ValueError, match="no words"):
        vocab_trainer.train_wordpiece({}, vocab_size=100)
    documents = _documents(random.Random(), 5)
    with pytest.raises(ValueError, match="cannot hold the 5 special tokens"):
        vocab_trainer.train_wordpiece(documents, vocab_size=20)
    with pytest.raises(ValueError, match="only supports a vocabulary of"):
        vocab_trainer.train_wordpiece(documents, vocab_size=100_000)
    with pytest.raises(ValueError, match="must be >= 1"):
        vocab_trainer.train_wordpiece(documents, vocab_size=100, min_frequency=0)
    with pytest.raises(ValueError, match="criterion must be one of 'likelihood', 'ratio', got 'bpe'"):
        vocab_trainer.train_wordpiece(documents, vocab_size=100, criterion="bpe")


def test_tokenization_stats_counts_words_tokens_and_unks():
    documents = [["Playing unaffable games.", "Zzz!"]]
    pieces = {"Playing": ["play", "##ing"], "unaffable": ["un", "##aff", "##able"], "games": ["[UNK]"]}
    stats = vocab_trainer.tokenization_stats(lambda s: [p for w in s.split() for p in pieces.get(w.strip(".!"), ["x"])]
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
        ours = vocab_trainer.train_vocab([str(tmp_path / "corpus.txt")], 220, out, do_lower_case=do_lower_case)
        assert len(ours) == 220
        assert (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:5] == list(SPECIAL_TOKENS)
        hf = transformers.BertTokenizerFast.from_pretrained(str(out))
        assert len(hf) == 220
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
    tok = vocab_trainer.train_vocab(str(tmp_path / "c.txt"), 200, tmp_path / "v", min_frequency=1)
    assert "j" not in tok.vocab and tok.tokenize("jokes") == ["[UNK]"]
    tok = vocab_trainer.train_vocab(str(tmp_path / "c.txt"), 200, tmp_path / "v2", min_frequency=1, held_out_every=None)
    assert "j" in tok.vocab and "[UNK]" not in tok.tokenize("jokes")


@pytest.mark.slow
def test_default_vocab_dir_trains_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path))
    directory = vocab_trainer.default_vocab_dir(vocab_size=1000)
    name = os.path.basename(directory)
    assert os.path.dirname(directory) == str(tmp_path) and name.startswith("vocab-builtin-1000-")
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary folder left behind
    tok = BertTokenizer.from_pretrained(directory)
    assert len(tok) == 1000 and tok.tokenize("The return value.") != ["[UNK]"] * 4
    mtime = os.path.getmtime(os.path.join(directory, "vocab.txt"))
    assert vocab_trainer.default_vocab_dir(vocab_size=1000) == directory
    assert os.path.getmtime(os.path.join(directory, "vocab.txt")) == mtime  # reused, not retrained


@pytest.mark.slow
def test_builtin_corpus_default_vocab_has_common_words_whole():
    # The default vocabulary (what default_vocab_dir() trains): built-in corpus minus every 10th document.
    documents = corpus.builtin_documents()
    train = list(corpus.held_out_split(documents, held_out=False))
    held_out = list(corpus.held_out_split(documents, held_out=True))
    word_counts = vocab_trainer.count_words(train)
    fit = {}
    for criterion in vocab_trainer.CRITERIA:
        learned = vocab_trainer.train_wordpiece(word_counts, criterion=criterion)
        assert len(learned) == vocab_trainer.DEFAULT_VOCAB_SIZE
        wordpiece = WordpieceTokenizer({t: i for i, t in enumerate(learned)})
        basic = BasicTokenizer(never_split=SPECIAL_TOKENS)
        fit[criterion] = vocab_trainer.tokenization_stats(
            lambda s: [p for w in basic.tokenize(s) for p in wordpiece.tokenize(w)], held_out)["tokens_per_word"]
        if criterion == "likelihood":
            for word in ("the", "and", "is", "be", "are"):
                assert wordpiece.tokenize(word) == [word]
        else:  # the per-occurrence score never joins the most frequent word of English
            assert wordpiece.tokenize("the") == ["th", "##e"]
    # Measured: 1.054 (likelihood) and 1.902 (ratio) held-out tokens per word (benchmarks/vocab.py).
    assert 1.0 < fit["likelihood"] < 1.15 and fit["ratio"] > 1.7


def test_cli_criterion_flag_picks_the_score(tmp_path, capsys):
    from minibert.cli import main

    text = " ".join(w for w, n in _HUG_WORDS.items() for _ in range(n))
    (tmp_path / "c.txt").write_text(text + "\n", encoding="utf-8")
    for criterion, first in (("ratio", "'##g' + '##s' -> '##gs'  count(ab)=5  score=0.05\n"),
                             ("likelihood", "'##u' + '##g' -> '##ug'  count(ab)=20  score=22.9\n")):
        assert main(["train-vocab", str(tmp_path / "c.txt"), "--vocab-size", "13", "--out",
                     str(tmp_path / criterion), "--show-merges", "1", "--criterion", criterion]) == 0
        assert f"merge     1: {first}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects it before anything runs
        main(["train-vocab", str(tmp_path / "c.txt"), "--out", str(tmp_path / "x"), "--criterion", "bpe"])
    assert exit_info.value.code == 2 and "invalid choice: 'bpe'" in capsys.readouterr().err
