"""Learning a WordPiece vocabulary from text (Schuster & Nakajima, 2012; the WordPiece of BERT).

WordPiece starts from single characters and grows the vocabulary one merge at a time, like BPE, but it
picks the merge differently. BPE merges the most *frequent* adjacent pair. WordPiece merges the pair that
most increases the likelihood of the training text under a unigram model of the current pieces (each
piece p drawn independently with probability count(p) / N, N the number of pieces in the text). Two
scores are on offer (``criterion=``):

    ratio(a, b)      = count(ab) / (count(a) * count(b))
    likelihood(a, b) = count(ab) * log(N * ratio(a, b))          (the default)

``N * ratio`` is "how many times more often a and b appear together than they would if independent",
and its log is what the likelihood gains *per occurrence* of ab; this per-occurrence form is the one
often quoted for WordPiece. The likelihood score multiplies it by the number of occurrences, which makes
it (to first order, see ``_MergeState.score``) the total gain of the merge, the quantity Schuster &
Nakajima maximise. The difference is large in practice. The ratio loves pairs whose pieces rarely appear
apart ("q" + "##u"; its first merges on the built-in corpus join digits of rare numbers) and leaves
frequent pieces apart: at 8,000 tokens it learns rare words whole ("unaffable" -> "unaff ##abl ##e")
but not "the" ("th ##e"), "be" or "are", and held-out text takes 1.90 tokens per word. The likelihood
learns "the" at its second merge and "of", "in", "is", "and" within its first 25, and gives 1.05 tokens
per word, as HF ``tokenizers``' WordPieceTrainer does (it trains BPE, the frequency criterion, then
writes a WordPiece vocabulary). Both numbers: ``python benchmarks/vocab.py``.

A word's first piece is written plainly and the others carry the "##" prefix ("playing" -> "play",
"##ing"), so the tokenizer knows where words start. The text is pre-tokenized with the same
``BasicTokenizer`` the ``BertTokenizer`` uses, so lower-casing, accents, punctuation and CJK characters
are handled identically when training and when tokenizing.

Vocabulary layout (a choice; HF ``tokenizers``' WordPieceTrainer makes the same one): the five special
tokens first, ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``, then the alphabet (word-initial characters,
then "##" characters, each sorted), then the merged pieces in the order they were learned, so reading
``vocab.txt`` from the top replays the training. Google's BERT-Base vocab instead puts 99 ``[unusedN]``
slots before ``[UNK]=100``; a small vocabulary has no room to spare for them.

Speed comes from never looking at the raw text again after counting it: training works on the table of
distinct words and their counts, keeps pair counts up to date incrementally (a merge only touches the
words that contain the pair), and finds the best pair with a lazy max-heap. Try it::

    python -m minibert train-vocab --vocab-size 8000 --out runs/vocab --show-merges 20
    python -m minibert train-vocab --vocab-size 8000 --out runs/vocab-ratio --criterion ratio
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from minibert.data.corpus import builtin_documents, held_out_split, load_corpus
from minibert.tokenizer.basic import BasicTokenizer
from minibert.tokenizer.bert import BertTokenizer
from minibert.tokenizer.vocab_file import SPECIAL_TOKENS

DEFAULT_VOCAB_SIZE = 8000  # small enough to train in a minute; BERT-Base uses 30,522
DEFAULT_MIN_FREQUENCY = 2  # a merge must be seen at least this often: a pair seen once scores 1.0 otherwise
DEFAULT_LIMIT_ALPHABET = 1000  # keep the 1000 most frequent characters; rarer ones become [UNK]
HELD_OUT_EVERY = 10  # every 10th document is held out to measure tokens per word on unseen text
MAX_INPUT_CHARS_PER_WORD = 100  # longer words are [UNK] in WordpieceTokenizer, so they teach nothing
CONTINUATION = "##"
UNK_TOKEN = "[UNK]"
CRITERIA = ("likelihood", "ratio")  # how a merge is scored; see the module docstring
DEFAULT_CRITERION = "likelihood"
# Bump when the training algorithm changes, so cached vocabularies trained by the old one are not reused.
# 2: the default criterion became "likelihood" (1 was "ratio").
_ALGORITHM_VERSION = 2


# ----------------------------------------------------------------------------------------------------
# Counting words

def count_words(documents: Iterable[Sequence[str]], do_lower_case: bool = True) -> Counter:
    """Pre-tokenize every sentence with ``BasicTokenizer`` and count the words.

    The basic tokenizer treats a space as a plain separator, so each distinct space-separated chunk is
    tokenized once and weighted by how often it occurs: the same words, far fewer calls.
    """
    chunks = Counter()
    for document in documents:
        for sentence in document:
            chunks.update(sentence.split(" "))
    basic = BasicTokenizer(do_lower_case=do_lower_case, never_split=SPECIAL_TOKENS)
    words = Counter()
    for chunk, count in chunks.items():
        for word in basic.tokenize(chunk):
            words[word] += count
    for special in SPECIAL_TOKENS:
        words.pop(special, None)  # already in the vocabulary, never split into pieces
    return words


# ----------------------------------------------------------------------------------------------------
# The merge loop

def _alphabet(word_counts: Mapping[str, int], limit_alphabet: int) -> set[str]:
    """The ``limit_alphabet`` most frequent characters (ties: lower code point first)."""
    chars = Counter()
    for word, count in word_counts.items():
        for ch in word:
            chars[ch] += count
    ranked = sorted(chars.items(), key=lambda item: (-item[1], item[0]))
    return {ch for ch, _ in ranked[:limit_alphabet]}


class _MergeState:
    """Pieces of every distinct word, with counts of pieces and adjacent pairs kept up to date.

    words[i]: the current pieces of distinct word i (e.g. ["th", "##e"]), freqs[i]: its count in the
    corpus. piece_count[p] and pair_count[(a, b)] are weighted by word counts, n_pieces is N, the number
    of pieces in the whole text (the sum of piece_count). Two indexes make a merge
    cheap: pair_words[(a, b)] -> the words that contain the pair (the only ones a merge changes) and
    piece_pairs[p] -> the pairs that contain piece p (the only ones whose score a merge changes).
    """

    def __init__(self, word_counts: Mapping[str, int]):
        self.words = [[w[0]] + [CONTINUATION + ch for ch in w[1:]] for w in sorted(word_counts)]
        self.freqs = [word_counts[w] for w in sorted(word_counts)]
        self.piece_count = Counter()
        self.pair_count = Counter()
        self.pair_words = defaultdict(set)
        self.piece_pairs = defaultdict(set)
        self.n_pieces = sum(len(pieces) * freq for pieces, freq in zip(self.words, self.freqs))
        for i, (pieces, freq) in enumerate(zip(self.words, self.freqs)):
            for piece in pieces:
                self.piece_count[piece] += freq
            for pair in zip(pieces, pieces[1:]):
                self._add_pair(pair, freq)
                self.pair_words[pair].add(i)

    def _add_pair(self, pair: tuple[str, str], delta: int) -> None:
        new = self.pair_count[pair] + delta
        if new > 0:
            if self.pair_count[pair] == 0:
                self.piece_pairs[pair[0]].add(pair)
                self.piece_pairs[pair[1]].add(pair)
            self.pair_count[pair] = new
        else:
            del self.pair_count[pair]
            self.pair_words.pop(pair, None)
            self.piece_pairs[pair[0]].discard(pair)
            self.piece_pairs[pair[1]].discard(pair)

    def score(self, pair: tuple[str, str], criterion: str) -> float:
        """The score of merging ``pair`` by ``criterion``: "ratio" or "likelihood" (module docstring)."""
        a, b = pair
        n_ab, n_a, n_b = self.pair_count[pair], self.piece_count[a], self.piece_count[b]
        if criterion == "ratio":
            return n_ab / (n_a * n_b)
        # Why this and not the exact gain. The log-likelihood of the text is sum_p c(p) log(c(p) / N).
        # Merging a, b (a != b, ab a new piece) c = c(ab) times sets c(ab) = c, c(a) -= c, c(b) -= c,
        # N -= c, and the exact gain new - old works out as
        #     c log(c N / (c(a) c(b)))                                  <- the score used here
        #   + (c(a) - c) log(1 - c/c(a)) + (c(b) - c) log(1 - c/c(b)) - (N - c) log(1 - c/N).
        # The correction terms come to about -c when c is small beside c(a), c(b) and N, and to up to +c
        # when a and b never occur apart: they shift the gain per occurrence by at most about one nat
        # (log(N ratio) is 1 to 3 nats for the first merges on the built-in corpus, so the two orders
        # differ in detail). We keep the first term, the per-occurrence gain times the count, the
        # approximation usually quoted, for three reasons: the exact form needs what pair counts do not
        # tell (a run "##l ##l ##l" holds the pair twice but merges once; ab may already exist, reached
        # from other pieces); it costs four logs instead of one; and it does not tokenize better: on the
        # built-in corpus at 8,000 tokens, 1.054 held-out tokens/word here, 1.053 with the exact gain,
        # which trained 2x slower. Both depend on N, which falls by c at every merge; the heap in
        # train_wordpiece explains why the lazy heap stays correct.
        return n_ab * math.log(n_ab * self.n_pieces / (n_a * n_b))

    def merge(self, pair: tuple[str, str]) -> str:
        """Replace every occurrence of ``pair`` by one new piece; return it."""
        a, b = pair
        merged = a + b[len(CONTINUATION):]  # b is never word-initial, so it always starts with "##"
        for i in sorted(self.pair_words[pair]):
            old, freq = self.words[i], self.freqs[i]
            new, j = [], 0
            while j < len(old):  # left to right, so "##l ##l ##l" becomes "##ll ##l"
                if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            n_merged = len(old) - len(new)
            self.piece_count[a] -= n_merged * freq
            self.piece_count[b] -= n_merged * freq
            self.piece_count[merged] += n_merged * freq
            self.n_pieces -= n_merged * freq
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                self._add_pair(p, -freq)
            for p in new_pairs:
                self._add_pair(p, freq)
            for p in set(old_pairs) - set(new_pairs):
                if p in self.pair_words:
                    self.pair_words[p].discard(i)
            for p in new_pairs:
                self.pair_words[p].add(i)
            self.words[i] = new
        return merged


def train_wordpiece(documents_or_word_counts: Iterable[Sequence[str]] | Mapping[str, int],
                    vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = DEFAULT_MIN_FREQUENCY,
                    do_lower_case: bool = True, limit_alphabet: int = DEFAULT_LIMIT_ALPHABET,
                    on_merge: Callable[[str, str, int, float], None] | None = None,
                    criterion: str = DEFAULT_CRITERION) -> list[str]:
    """Learn a WordPiece vocabulary of exactly ``vocab_size`` tokens; return it in id order.

    ``documents_or_word_counts`` is a corpus (documents of sentences, pre-tokenized here with
    ``BasicTokenizer(do_lower_case)``) or an already counted ``{word: count}`` mapping. Merges seen fewer
    than ``min_frequency`` times are never made. Characters outside the ``limit_alphabet`` most frequent
    ones are left out, and so are the words that contain them (the tokenizer maps those words to [UNK]).
    ``criterion`` scores a merge: "likelihood" (default), count(ab) * log(N * count(ab) / (count(a) *
    count(b))), the gain in log-likelihood of the whole text, or "ratio", count(ab) / (count(a) *
    count(b)), its per-occurrence form (module docstring). Ties between equal scores go to the more
    frequent pair, then to the alphabetically first, so the result depends only on the word counts.
    ``on_merge(a, b, count, score)``, when given, is called for every merge, in order (``minibert
    train-vocab --show-merges`` prints them).

    Raises ``ValueError`` for an unknown ``criterion``, an empty corpus, a ``vocab_size`` too small to
    hold the special tokens and the alphabet, or a corpus too small to supply ``vocab_size`` tokens.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}, got {criterion!r}")
    if min_frequency < 1 or limit_alphabet < 1:
        raise ValueError(f"min_frequency and limit_alphabet must be >= 1, got {min_frequency}, {limit_alphabet}")
    if isinstance(documents_or_word_counts, Mapping):
        word_counts = {w: int(c) for w, c in documents_or_word_counts.items() if c > 0 and w}
    else:
        word_counts = count_words(documents_or_word_counts, do_lower_case)
    alphabet = _alphabet(word_counts, limit_alphabet)
    word_counts = {w: c for w, c in word_counts.items()
                   if len(w) <= MAX_INPUT_CHARS_PER_WORD and set(w) <= alphabet}
    if not word_counts:
        raise ValueError("the corpus contains no words to learn a vocabulary from")

    state = _MergeState(word_counts)
    initial = sorted({pieces[0] for pieces in state.words})
    continuing = sorted({p for pieces in state.words for p in pieces[1:]})
    vocab = list(SPECIAL_TOKENS) + initial + continuing
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size={vocab_size} cannot hold the {len(SPECIAL_TOKENS)} special tokens and the "
            f"{len(vocab) - len(SPECIAL_TOKENS)} alphabet pieces of this corpus; use vocab_size >= "
            f"{len(vocab)} or a smaller limit_alphabet")
    known = set(vocab)

    # Lazy max-heap: an entry is (-score, -count, a, b) as it was when pushed. A merge changes the count
    # or score of the pairs that contain a, b or ab, and each of those gets a fresh entry. The
    # likelihood score of every other pair depends on N too, and N falls at every merge, so their
    # scores fall a little without a fresh entry. That is safe because they only fall: every pair
    # keeps an entry whose score is not below its current score. So when the top entry, re-scored now,
    # is unchanged, no other pair can beat it; when it has changed it is pushed back with its current
    # score and the next one is tried. Ties go to the larger count, then the first pair alphabetically.
    def entry(pair):
        return (-state.score(pair, criterion), -state.pair_count[pair], pair[0], pair[1])

    heap = [entry(pair) for pair, count in state.pair_count.items() if count >= min_frequency]
    heapq.heapify(heap)
    while len(vocab) < vocab_size:
        if not heap:
            raise ValueError(
                f"the corpus only supports a vocabulary of {len(vocab)} tokens at min_frequency="
                f"{min_frequency}; ask for vocab_size <= {len(vocab)}, lower min_frequency, or add text")
        popped = heapq.heappop(heap)
        neg_score, neg_count, a, b = popped
        pair = (a, b)
        if state.pair_count.get(pair, 0) < min_frequency:
            continue  # merged away, or seen too rarely now
        current = entry(pair)
        if current != popped:
            heapq.heappush(heap, current)  # stale: re-rank it by its score now
            continue
        if on_merge is not None:
            on_merge(a, b, -neg_count, -neg_score)
        merged = state.merge(pair)
        if merged not in known:  # "##abc" can be reached twice: from ("##ab", "##c") and ("##a", "##bc")
            known.add(merged)
            vocab.append(merged)
        # Only pairs that contain a, b or the new piece changed count, or can score higher than before.
        for piece in (a, b, merged):
            for p in state.piece_pairs.get(piece, ()):
                if state.pair_count[p] >= min_frequency:
                    heapq.heappush(heap, entry(p))
    return vocab


# ----------------------------------------------------------------------------------------------------
# Saving, loading, measuring

def save_vocab(vocab: Sequence[str], out_dir: str | os.PathLike, do_lower_case: bool = True) -> BertTokenizer:
    """Write ``vocab.txt`` + ``tokenizer_config.json`` to ``out_dir`` and return the ``BertTokenizer``."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(token + "\n" for token in vocab))
        tokenizer = BertTokenizer(vocab_file, do_lower_case=do_lower_case)
        tokenizer.save_pretrained(os.fspath(out_dir))
    return BertTokenizer.from_pretrained(os.fspath(out_dir))


def train_vocab(corpus_spec, vocab_size: int = DEFAULT_VOCAB_SIZE, out_dir: str | os.PathLike = "runs/vocab",
                do_lower_case: bool = True, *, min_frequency: int = DEFAULT_MIN_FREQUENCY,
                limit_alphabet: int = DEFAULT_LIMIT_ALPHABET,
                held_out_every: int | None = HELD_OUT_EVERY,
                on_merge: Callable[[str, str, int, float], None] | None = None,
                criterion: str = DEFAULT_CRITERION) -> BertTokenizer:
    """Train a vocabulary on a corpus (``"builtin"`` or paths, see ``load_corpus``) and save it to ``out_dir``.

    Every ``held_out_every``-th document is left out of training, so ``tokenization_stats`` on
    ``held_out_split(..., held_out=True)`` measures unseen text; ``held_out_every=None`` trains on all.
    ``on_merge`` and ``criterion`` are passed to ``train_wordpiece``. Returns the ``BertTokenizer`` loaded from ``out_dir``.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"output path {os.fspath(out_dir)!r} is a file, not a folder; pass a folder for "
                         "vocab.txt and tokenizer_config.json")  # say so now, not after training
    documents = load_corpus(corpus_spec)
    if held_out_every:
        documents = held_out_split(documents, held_out=False, every=held_out_every)
    vocab = train_wordpiece(documents, vocab_size=vocab_size, min_frequency=min_frequency,
                            do_lower_case=do_lower_case, limit_alphabet=limit_alphabet, on_merge=on_merge,
                            criterion=criterion)
    return save_vocab(vocab, out_dir, do_lower_case)


def tokenization_stats(tokenize: Callable[[str], list[str]], documents: Iterable[Sequence[str]],
                       do_lower_case: bool = True, unk_token: str = UNK_TOKEN) -> dict:
    """How well a tokenizer fits some text: words, tokens, tokens per word and the [UNK] rate.

    ``tokenize`` maps a sentence to its tokens (without [CLS]/[SEP]); words are counted with
    ``BasicTokenizer``, so different tokenizers are compared on the same denominator. ``unk_rate`` is
    the fraction of words that became [UNK].
    """
    basic = BasicTokenizer(do_lower_case=do_lower_case, never_split=SPECIAL_TOKENS)
    n_words = n_tokens = n_unk = 0
    for document in documents:
        for sentence in document:
            tokens = tokenize(sentence)
            n_words += len(basic.tokenize(sentence))
            n_tokens += len(tokens)
            n_unk += sum(t == unk_token for t in tokens)
    return {"words": n_words, "tokens": n_tokens,
            "tokens_per_word": n_tokens / n_words if n_words else float("nan"),
            "unk_rate": n_unk / n_words if n_words else float("nan")}


def _cache_root() -> str:
    return os.environ.get("MINIBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert")


def default_vocab_dir(vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
    """A directory holding a vocabulary trained on the built-in corpus; trained and cached on first call.

    The cache lives under ``$MINIBERT_CACHE`` (default ``~/.cache/minibert``) as
    ``vocab-builtin-<size>-<hash>``, the hash covering the corpus text and every training parameter, so
    a new Python version (new docstrings) or a new algorithm gets a new vocabulary. The folder is
    built under a temporary name and renamed, so an interrupted run never leaves half a vocabulary.
    """
    params = {"vocab_size": vocab_size, "min_frequency": DEFAULT_MIN_FREQUENCY, "do_lower_case": True,
              "limit_alphabet": DEFAULT_LIMIT_ALPHABET, "held_out_every": HELD_OUT_EVERY,
              "criterion": DEFAULT_CRITERION, "algorithm": _ALGORITHM_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for document in builtin_documents():
        digest.update("\n".join(document).encode("utf-8") + b"\n\n")
    final = os.path.join(_cache_root(), f"vocab-builtin-{vocab_size}-{digest.hexdigest()[:12]}")
    if os.path.isfile(os.path.join(final, "vocab.txt")):
        return final
    os.makedirs(_cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=_cache_root(), prefix=".vocab-building-")
    try:
        train_vocab("builtin", vocab_size, tmp, do_lower_case=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "vocab.txt")):
                raise  # not "another process finished first": a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
