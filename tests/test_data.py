"""Tests for minibert.data: NSP pairs, masking, batching, statistics, shards.

Statistical checks use tolerances of 4 binomial standard deviations, sqrt(p (1 - p) / n): a correct
implementation fails one of them with probability ~6e-5, and the seeds are fixed, so they do not flake.
Hand-derived cases drive the algorithm with a scripted "rng" whose every draw is written in the test.
"""
import math
import os
import random

import numpy as np
import pytest

from minibert.data import (IGNORE_INDEX, MaskingSpec, PretrainingShards, TrainingInstance, collate,
                           create_training_instances, data_statistics, mask_tokens, truncate_seq_pair,
                           write_shards)
from minibert.tokenizer import BertTokenizer
from minibert.data.instances import instances_from_document


# ----------------------------------------------------------------------------------------------------
# A tiny vocabulary for hand-made corpora, read by the real BertTokenizer.

def make_tokenizer(tokens, directory):
    """A BertTokenizer over exactly ``tokens`` (written to ``directory/vocab.txt``)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return BertTokenizer(path)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STEMS = ["the", "a", "cat", "dog", "run", "jump", "play", "walk", "see", "bird", "tree", "house", "read",
         "write", "blue", "green", "fast", "slow", "big", "small", "sun", "moon", "star", "sky"]
SUFFIXES = ["##s", "##ing", "##ed", "##er", "##ly"]
WORD_VOCAB = SPECIALS + STEMS + SUFFIXES + [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(WORD_VOCAB, tmp_path_factory.mktemp("vocab"))


def random_corpus(num_docs, seed):
    """Documents of 1-25 sentences of 2-14 words; ~40% of words carry a ## suffix."""
    rng = random.Random(seed)
    words = STEMS + [s + x[2:] for s in STEMS for x in SUFFIXES]
    docs = []
    for _ in range(num_docs):
        docs.append([" ".join(rng.choice(words) for _ in range(rng.randint(2, 14)))
                     for _ in range(rng.randint(1, 25))])
    return docs


class ScriptedRng:
    """Stands in for random.Random: every draw is given in advance, and its kind is checked."""

    def __init__(self, script):
        self.script = list(script)

    def _next(self, kind, *args):
        expected_kind, value = self.script.pop(0)
        assert expected_kind == kind, f"algorithm drew {kind}{args}, script expected {expected_kind}"
        return value

    def random(self):
        return self._next("random")

    def randint(self, a, b):
        value = self._next("randint", a, b)
        assert a <= value <= b
        return value

    def randrange(self, start, stop=None):
        start, stop = (0, start) if stop is None else (start, stop)
        value = self._next("randrange", start, stop)
        assert start <= value < stop
        return value


# ----------------------------------------------------------------------------------------------------
# Hand-derived cases

def test_truncate_seq_pair_by_hand():
    a, b = list("abcdef"), list("xyz")  # 6 + 3 = 9 tokens, limit 5: remove 4
    # Draws: <0.5 cuts the front, >=0.5 the back. The longer side is A until A == B in length; on a tie B.
    rng = ScriptedRng([("random", 0.49), ("random", 0.9), ("random", 0.5), ("random", 0.2)])
    truncate_seq_pair(a, b, 5, rng)
    # 1: A 6>3, front -> bcdef   2: A 5>3, back -> bcde   3: A 4>3, back (0.5 is not < 0.5) -> bcd
    # 4: tie 3=3 -> B, front -> yz
    assert a == list("bcd") and b == list("yz")
    assert not rng.script


def test_put_back_rewind_by_hand():
    # Document 0 has 4 sentences of 3 tokens; document 1 has 3 sentences. Ids are arbitrary distinct ints.
    doc0 = [[10, 11, 12], [20, 21, 22], [30, 31, 32], [40, 41, 42]]
    doc1 = [[70, 71], [80, 81, 82], [90, 91]]
    window = [doc0, doc1]
    cls, sep = 2, 3
    rng = ScriptedRng([
        ("random", 0.5),       # short_seq_prob=0.1: 0.5 >= 0.1, target stays max_num_tokens = 8
        # i=0: 3 tokens; i=1: 6; i=2: 9 >= 8 -> chunk [s0 s1 s2]
        ("randint", 1),        # a_end in [1, 2] -> A = s0
        ("random", 0.3),       # < 0.5: random next
        ("randrange", 0),      # the other document: index 0 of the 1 others -> doc1
        ("randrange", 0),      # start at doc1's s0; B wants 8 - 3 = 5 tokens: s0 (2), s1 (5), stop
        # A=3 + B=5 = 8 <= 8: no truncation. Put back s1, s2: i = 2 - 2 = 0, then i += 1 -> 1.
        # i=1: s1 (3); i=2: 6; i=3: 9 and last -> chunk [s1 s2 s3]
        ("randint", 2),        # a_end -> A = s1 s2
        ("random", 0.6),       # >= 0.5: IsNext, B = s3
        # A=6 + B=3 = 9 > 8: truncate the longer, A, once
        ("random", 0.2),       # front: A = 21 22 30 31 32
    ])
    instances = instances_from_document(window, 0, 8, 0.1, None, rng, cls, sep)
    assert not rng.script
    assert [i.tokens for i in instances] == [
        [cls, 10, 11, 12, sep, 70, 71, 80, 81, 82, sep],
        [cls, 21, 22, 30, 31, 32, sep, 40, 41, 42, sep],
    ]
    assert [i.segment_ids for i in instances] == [[0] * 5 + [1] * 6, [0] * 7 + [1] * 4]
    assert [i.is_random_next for i in instances] == [True, False]
    assert [i.next_sentence_label for i in instances] == [1, 0]
    assert all(i.masked_lm_positions == [] and i.masked_lm_labels == [] for i in instances)


def test_one_sentence_chunk_is_always_random_next_without_a_coin():
    window = [[[10, 11, 12, 13, 14, 15, 16, 17, 18]], [[70, 71]]]
    rng = ScriptedRng([
        ("random", 0.9),     # long target 6
        # one sentence of 9 >= 6: chunk of one sentence, a_end = 1, no randint, no coin
        ("randrange", 0), ("randrange", 0),  # doc1, from its first sentence: B = 70 71
        # A 9 + B 2 > 6: cut A five times (A stays the longer side): back, front, back, back, front
        ("random", 0.9), ("random", 0.1), ("random", 0.9), ("random", 0.9), ("random", 0.1),
    ])
    (instance,) = instances_from_document(window, 0, 6, 0.1, None, rng, 2, 3)
    assert not rng.script
    assert instance.tokens == [2, 12, 13, 14, 15, 3, 70, 71, 3] and instance.is_random_next


def test_mask_tokens_budget_specials_and_80_10_10_by_hand(tokenizer):
    spec = MaskingSpec.from_tokenizer(tokenizer, masked_lm_prob=0.15)
    v = tokenizer.vocab
    # [CLS] + 18 words + [SEP] + 2 words + [SEP]: 20 maskable tokens -> round(0.15 * 20) = 3 predictions.
    words = [v[w] for w in (STEMS[:18] + STEMS[18:20])]
    ids = [v["[CLS]"], *words[:18], v["[SEP]"], *words[18:], v["[SEP]"]]

    # Candidate words: [[1], ..., [18], [20], [21]] (20 of them). Each visit swaps a random remaining word
    # into place j (Fisher-Yates), then draws its 80/10/10 fate.
    rng = ScriptedRng([("randrange", 19), ("random", 0.5),                    # j=0: word 19 = [21] -> [MASK]
                       ("randrange", 18), ("random", 0.85), ("random", 0.3),  # j=1: word 18 = [20] -> kept
                       ("randrange", 17), ("random", 0.95), ("random", 0.7),  # j=2: word 17 = [18] -> random:
                       ("randrange", 0)])                                     # the first ordinary id
    masked, positions, labels = mask_tokens(ids, spec, rng)
    assert not rng.script
    assert positions == [18, 20, 21]
    assert labels == [ids[18], ids[20], ids[21]]
    first_ordinary = min(set(range(len(WORD_VOCAB))) - spec.special_ids)
    assert masked[21] == v["[MASK]"] and masked[20] == ids[20] and masked[18] == first_ordinary
    assert [m for i, m in enumerate(masked) if i not in positions] == [t for i, t in enumerate(ids)
                                                                       if i not in positions]


def test_whole_word_mask_respects_budget_per_word(tokenizer):
    v = tokenizer.vocab
    spec = MaskingSpec.from_tokenizer(tokenizer, masked_lm_prob=0.5, max_predictions_per_seq=2,
                                      whole_word_mask=True)
    # "playing walked read": play ##ing | walk ##ed | read -> budget min(2, round(0.5 * 5)) = 2
    ids = [v["[CLS]"], v["play"], v["##ing"], v["walk"], v["##ed"], v["read"], v["[SEP]"], v["sun"], v["[SEP]"]]
    for seed in range(50):
        _, positions, _ = mask_tokens(ids, spec, random.Random(seed))
        assert len(positions) <= 2
        groups = {(1, 2), (3, 4)}
        for a, b in groups:  # a word is predicted whole or not at all
            assert (a in positions) == (b in positions)
    # A ## piece right after [SEP] (left by truncation) is its own word, not part of A's last word.
    ids = [v["[CLS]"], v["sun"], v["[SEP]"], v["##s"], v["[SEP]"]]
    spec1 = MaskingSpec.from_tokenizer(tokenizer, masked_lm_prob=0.5, max_predictions_per_seq=1,
                                       whole_word_mask=True)
    seen = {tuple(mask_tokens(ids, spec1, random.Random(s))[1]) for s in range(20)}
    assert seen == {(1,), (3,)}


# ----------------------------------------------------------------------------------------------------
# Statistics over a corpus

MAX_LEN = 64


@pytest.fixture(scope="module")
def corpus():
    return random_corpus(120, seed=1)


@pytest.fixture(scope="module")
def static_instances(corpus, tokenizer):
    return list(create_training_instances(corpus, tokenizer, max_seq_length=MAX_LEN, dupe_factor=3, seed=7))


def test_masking_statistics(static_instances, tokenizer):
    stats = data_statistics(static_instances, tokenizer)
    spec = MaskingSpec.from_tokenizer(tokenizer)
    # The number of predictions is deterministic: round(0.15 * maskable), at least 1, at most 20.
    for instance in static_instances:
        n = sum(t not in spec.special_ids for t in instance.original_tokens())
        assert len(instance.masked_lm_positions) == min(20, max(1, round(0.15 * n)))
    # So the overall rate is 0.15 up to rounding: at most 0.5 per instance, i.e. 0.5 / mean maskable tokens.
    mean_maskable = stats["num_predicted"] / stats["masking_rate"] / stats["num_instances"]
    assert abs(stats["masking_rate"] - 0.15) <= 0.5 / mean_maskable
    m = stats["num_predicted"]
    assert m > 3000
    for name, p in (("mask_fraction", 0.8), ("random_fraction", 0.1), ("kept_fraction", 0.1)):
        assert abs(stats[name] - p) < 4 * math.sqrt(p * (1 - p) / m), (name, stats[name])
    assert stats["special_masked"] == 0
    # Without whole-word masking, a word's pieces are chosen independently: few are wholly predicted.
    assert stats["whole_word_fraction"] < 0.3
    assert stats["max_length"] <= MAX_LEN


def test_whole_word_masking_statistics(corpus, tokenizer):
    instances = list(create_training_instances(corpus, tokenizer, max_seq_length=MAX_LEN, dupe_factor=2,
                                               whole_word_mask=True, seed=3))
    stats = data_statistics(instances, tokenizer)
    assert stats["whole_word_fraction"] == 1.0
    assert stats["special_masked"] == 0
    # Skipping words that overshoot the budget can only lower the rate, by less than one word per instance.
    mean_maskable = stats["num_predicted"] / stats["masking_rate"] / stats["num_instances"]
    assert 0.10 < stats["masking_rate"] <= 0.15 + 0.5 / mean_maskable


@pytest.mark.parametrize("max_seq_length", [5, 6, 9, 24])
def test_instance_invariants(tokenizer, max_seq_length):
    # Tiny lengths stress truncation: A and B keep at least one token each; masks never hit specials.
    spec = MaskingSpec.from_tokenizer(tokenizer)
    cls, sep = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    docs = random_corpus(30, seed=max_seq_length)
    for instance in create_training_instances(docs, tokenizer, max_seq_length=max_seq_length, dupe_factor=2,
                                              short_seq_prob=0.5, whole_word_mask=True, seed=max_seq_length):
        tokens, segments = instance.original_tokens(), instance.segment_ids
        assert len(tokens) <= max_seq_length and len(segments) == len(tokens)
        num_a = segments.count(0)
        assert num_a >= 3 and len(tokens) - num_a >= 2 and segments == [0] * num_a + [1] * (len(tokens) - num_a)
        assert tokens[0] == cls and tokens[num_a - 1] == sep and tokens[-1] == sep
        assert cls not in tokens[1:] and tokens.count(sep) == 2
        assert instance.masked_lm_positions == sorted(set(instance.masked_lm_positions))
        assert 1 <= len(instance.masked_lm_positions) <= 20
        assert all(tokens[p] not in spec.special_ids for p in instance.masked_lm_positions)
        unmasked = [t for p, t in enumerate(instance.tokens) if p not in instance.masked_lm_positions]
        assert unmasked == [t for p, t in enumerate(tokens) if p not in instance.masked_lm_positions]


def test_nsp_coin_is_fair(tokenizer):
    # Two one-token sentences per document: each (document, pass) tosses exactly one coin, IsNext gives
    # one label-0 instance, NotNext gives two label-1 instances (the put-back sentence is alone).
    docs = [[f"w{i % 40}", f"w{(i + 1) % 40}"] for i in range(500)]
    instances = list(create_training_instances(docs, tokenizer, max_seq_length=16, dupe_factor=4, dynamic_masking=True,
                                               seed=11))
    tosses = 500 * 4
    is_next = sum(not i.is_random_next for i in instances)
    assert len(instances) == is_next + 2 * (tosses - is_next)
    assert abs(is_next / tosses - 0.5) < 4 * math.sqrt(0.25 / tosses)


@pytest.mark.parametrize("short_seq_prob", [0.0, 0.1, 0.5])
def test_short_seq_prob_fraction(short_seq_prob, tokenizer):
    # 32 one-token sentences per document, max_num_tokens = 32. With the full target the first chunk is the
    # whole document, and an IsNext instance of exactly 32 tokens comes out with probability 1/2; a short
    # target (drawn with short_seq_prob, uniform in [2, 32]) reaches 32 only when it draws 32.
    docs = [[f"w{(d + s) % 40}" for s in range(32)] for d in range(400)]
    instances = create_training_instances(docs, tokenizer, max_seq_length=35, dupe_factor=10,
                                          short_seq_prob=short_seq_prob, dynamic_masking=True, seed=5)
    passes = 400 * 10
    full = 0
    for instance in instances:
        assert len(instance.tokens) <= 35
        full += len(instance.tokens) == 35 and not instance.is_random_next
    p = 0.5 * (1 - short_seq_prob + short_seq_prob / 31)
    assert abs(full / passes - p) < 4 * math.sqrt(p * (1 - p) / passes), (full / passes, p)


def test_segments_fill_the_sequence(static_instances):
    lengths = [len(i.tokens) for i in static_instances]
    assert max(lengths) <= MAX_LEN
    # Most instances are near the full length; only short targets and document ends give short ones.
    assert np.mean([n >= MAX_LEN - 10 for n in lengths]) > 0.5
    for instance in static_instances:
        s = instance.segment_ids
        assert s == sorted(s) and s[0] == 0 and s[-1] == 1
        a_len, b_len = s.count(0) - 2, s.count(1) - 1
        assert a_len >= 1 and b_len >= 1


def test_deterministic_from_seed(corpus, tokenizer, static_instances):
    again = list(create_training_instances(corpus, tokenizer, max_seq_length=MAX_LEN, dupe_factor=3, seed=7))
    assert again == static_instances
    other = list(create_training_instances(corpus, tokenizer, max_seq_length=MAX_LEN, dupe_factor=3, seed=8))
    assert other != static_instances


def test_streaming_equals_list_within_one_window(corpus, tokenizer, static_instances):
    streamed = list(create_training_instances(iter(corpus), tokenizer, max_seq_length=MAX_LEN, dupe_factor=3,
                                              seed=7))
    assert streamed == static_instances


def test_windows_keep_random_next_local_and_use_every_document(tokenizer):
    # Document d is made of the single word w<d>: a random B must come from the same window of 10.
    # 31 = 10 + 10 + 11: the last window takes the one document left over instead of leaving it alone.
    docs = [[f"w{d}"] * 3 for d in range(31)]
    instances = list(create_training_instances(docs, tokenizer, max_seq_length=16, dupe_factor=1,
                                               dynamic_masking=True, documents_per_window=10, seed=1))
    inv = {i: t for t, i in tokenizer.vocab.items()}
    seen = set()
    for instance in instances:
        a_doc = int(inv[instance.tokens[1]][1:])
        b_doc = int(inv[instance.tokens[instance.segment_ids.index(1)]][1:])
        seen.add(a_doc)
        assert min(a_doc // 10, 2) == min(b_doc // 10, 2)
        assert (a_doc != b_doc) == instance.is_random_next
    assert seen == set(range(31))


def test_streaming_reads_one_window_at_a_time(tokenizer):
    read = []

    def documents():  # an endless corpus: only laziness lets this test finish
        d = 0
        while True:
            read.append(d)
            yield [f"w{d % 40} cat", f"dog w{(d + 1) % 40}", "the sun"]
            d += 1

    instances = create_training_instances(documents(), tokenizer, max_seq_length=16, documents_per_window=25)
    first_window = [next(instances) for _ in range(10)]
    assert len(read) == 25 + 2  # one window, plus the two held back so a last window is never alone
    assert all(len(i.tokens) <= 16 for i in first_window)


# ----------------------------------------------------------------------------------------------------
# Batching

def test_collate_pads_and_labels(static_instances):
    batch_instances = static_instances[:5]
    batch = collate(batch_instances, pad_id=0, max_seq_length=MAX_LEN)
    longest = max(len(i.tokens) for i in batch_instances)
    assert batch["input_ids"].shape == (5, longest) and batch["input_ids"].dtype == np.int64
    for b, instance in enumerate(batch_instances):
        n = len(instance.tokens)
        assert batch["input_ids"][b, :n].tolist() == instance.tokens
        assert (batch["input_ids"][b, n:] == 0).all()
        assert batch["token_type_ids"][b, :n].tolist() == instance.segment_ids
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (longest - n)
        predicted = np.flatnonzero(batch["labels"][b] != IGNORE_INDEX).tolist()
        assert predicted == instance.masked_lm_positions
        assert batch["labels"][b, predicted].tolist() == instance.masked_lm_labels
    assert batch["next_sentence_label"].tolist() == [int(i.is_random_next) for i in batch_instances]
    fixed = collate(batch_instances, pad_id=0, max_seq_length=MAX_LEN, pad_to="max_length")
    assert fixed["input_ids"].shape == (5, MAX_LEN)
    assert (fixed["input_ids"][:, :longest] == batch["input_ids"]).all()


def test_collate_dynamic_masking_draws_fresh_masks(corpus, tokenizer):
    instances = list(create_training_instances(corpus[:20], tokenizer, max_seq_length=MAX_LEN, dupe_factor=1,
                                               dynamic_masking=True, seed=2))
    assert all(not i.masked_lm_positions for i in instances)
    with pytest.raises(ValueError, match="dynamic_masking"):
        collate(instances[:4], pad_id=0, max_seq_length=MAX_LEN)
    spec = MaskingSpec.from_tokenizer(tokenizer)
    rng = random.Random(0)
    first = collate(instances[:4], 0, MAX_LEN, masking=spec, rng=rng)
    second = collate(instances[:4], 0, MAX_LEN, masking=spec, rng=rng)
    assert (first["labels"] != second["labels"]).any()  # a new epoch, new masks
    for batch in (first, second):
        predicted = batch["labels"] != IGNORE_INDEX
        original = np.where(predicted, batch["labels"], batch["input_ids"])
        # Labels hold the original tokens: unmasking the batch gives back the instances.
        for b, instance in enumerate(instances[:4]):
            assert original[b, :len(instance.tokens)].tolist() == instance.tokens
        assert predicted.sum() > 0
    # Already-masked instances are unmasked first, so they get exactly the same fresh masks.
    mask_rng = random.Random(99)
    masked = []
    for i in instances[:4]:
        tokens, positions, labels = mask_tokens(i.tokens, spec, mask_rng)
        masked.append(TrainingInstance(tokens, i.segment_ids, i.is_random_next, positions, labels))
    assert [m.tokens for m in masked] != [i.tokens for i in instances[:4]]
    again = collate(masked, 0, MAX_LEN, masking=spec, rng=random.Random(0))
    assert all((again[k] == first[k]).all() for k in first)


def test_collate_with_one_rng_per_instance_masks_each_instance_on_its_own(corpus, tokenizer):
    """With ``rngs``, an instance's masks depend on its generator only, not on its batch-mates or order."""
    instances = list(create_training_instances(corpus[:20], tokenizer, max_seq_length=MAX_LEN, dupe_factor=1,
                                               dynamic_masking=True, seed=4))[:5]
    spec = MaskingSpec.from_tokenizer(tokenizer)
    seeds = random.Random(7).sample(range(10**9), len(instances))
    together = collate(instances, 0, MAX_LEN, masking=spec, rngs=[random.Random(s) for s in seeds])
    for b in (3, 0, 4):  # alone, in another order: the same row
        alone = collate([instances[b]], 0, MAX_LEN, masking=spec, rngs=[random.Random(seeds[b])])
        n = len(instances[b].tokens)
        for key in ("input_ids", "labels"):
            assert alone[key][0, :n].tolist() == together[key][b, :n].tolist()
        # and the same masks as mask_tokens drawing from that generator directly
        tokens, positions, labels = mask_tokens(instances[b].tokens, spec, random.Random(seeds[b]))
        assert alone["input_ids"][0, :n].tolist() == tokens and alone["labels"][0, positions].tolist() == labels
    assert (together["labels"] != IGNORE_INDEX).sum() > 0
    with pytest.raises(ValueError, match="not both"):
        collate(instances, 0, MAX_LEN, masking=spec, rng=random.Random(0), rngs=[random.Random(0)] * 5)
    with pytest.raises(ValueError, match="not both"):
        collate(instances, 0, MAX_LEN, masking=spec)
    with pytest.raises(ValueError, match="4 generators for 5 instances"):
        collate(instances, 0, MAX_LEN, masking=spec, rngs=[random.Random(0)] * 4)


def test_to_torch(static_instances):
    torch = pytest.importorskip("torch")
    from minibert.data import to_torch
    batch = to_torch(collate(static_instances[:3], pad_id=0, max_seq_length=MAX_LEN))
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].shape == batch["input_ids"].shape


# ----------------------------------------------------------------------------------------------------
# Errors

def test_errors(tokenizer, corpus, tmp_path):
    make = lambda docs=corpus, tok=tokenizer, **kw: list(create_training_instances(docs, tok, **kw))  # noqa: E731
    with pytest.raises(ValueError, match="empty"):
        make([])
    with pytest.raises(ValueError, match="empty"):
        make(iter([["   "], [""]]))
    with pytest.raises(ValueError, match="document 1 has no sentences"):
        make([["the cat"], [], ["a dog"]])
    with pytest.raises(TypeError, match="list of sentence strings"):
        make(["the cat runs", "a dog"])
    with pytest.raises(ValueError, match="single document"):
        make([["the cat", "a dog"]])
    with pytest.raises(ValueError, match="max_seq_length"):
        create_training_instances(corpus, tokenizer, max_seq_length=4)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        create_training_instances(corpus, tokenizer, max_seq_length=513)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        create_training_instances(corpus, tokenizer, max_seq_length=128, max_position_embeddings=64)
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="masked_lm_prob"):
            create_training_instances(corpus, tokenizer, masked_lm_prob=p)
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        create_training_instances(corpus, tokenizer, max_predictions_per_seq=0)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        create_training_instances(corpus, make_tokenizer([t for t in WORD_VOCAB if t != "[MASK]"], tmp_path))
    with pytest.raises(ValueError, match="longer|more than max_seq_length"):
        collate([TrainingInstance([2, 5, 3, 6, 3], [0, 0, 0, 1, 1], False, [1], [5])], 0, max_seq_length=4)


# ----------------------------------------------------------------------------------------------------
# Shards

def _key(instance):
    return (tuple(instance.tokens), tuple(instance.segment_ids), instance.is_random_next,
            tuple(instance.masked_lm_positions), tuple(instance.masked_lm_labels))


@pytest.fixture(scope="module")
def shard_dir(static_instances, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    paths = write_shards(iter(static_instances), directory, tokenizer, instances_per_shard=37)
    assert len(paths) == math.ceil(len(static_instances) / 37)
    return directory


def test_shards_round_trip(shard_dir, static_instances, tokenizer):
    ds = PretrainingShards(shard_dir, tokenizer=tokenizer)
    assert len(ds) == len(static_instances) and ds.masked
    assert list(ds) == static_instances
    assert ds[5] == static_instances[5] and ds[-1] == static_instances[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    with np.load(os.path.join(shard_dir, "shard-00000.npz")) as npz:
        assert npz["tokens"].dtype == np.int16 and npz["segment_ids"].dtype == np.int8
    # The tokenizer is saved beside the shards: `minibert pretrain --shards DIR` loads it from there.
    assert BertTokenizer.from_pretrained(shard_dir).vocab == tokenizer.vocab


def step_batches(instances, rank, world_size, masking=None, num_steps=20):
    from minibert.train.data import StepBatches
    return StepBatches(instances, micro_batch_size=3, grad_accum=2, rank=rank, world_size=world_size, seed=4,
                       pad_id=0, max_seq_length=MAX_LEN, num_steps=num_steps, masking=masking)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("dynamic", [False, True])
def test_shards_batch_like_instances_in_memory(shard_dir, static_instances, tokenizer, dynamic):
    """One data path: shards on disk give exactly the batches (order, rank split, masks) of the same
    instances in memory, for every rank of a 2-process run."""
    masking = MaskingSpec.from_tokenizer(tokenizer) if dynamic else None
    shards = PretrainingShards(shard_dir)
    steps = len(static_instances) // 12 + 2  # into the second epoch
    for rank in range(2):
        disk, memory = step_batches(shards, rank, 2, masking), step_batches(static_instances, rank, 2, masking)
        for step in (0, 1, steps):
            assert_same_batches(disk[step], memory[step])


def test_shards_in_dataloader_workers(shard_dir):
    """Worker processes build whole steps from the shards; the loader yields the steps in order."""
    torch = pytest.importorskip("torch")
    batches = step_batches(PretrainingShards(shard_dir), 1, 2, num_steps=6)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(6), num_workers=2,
                                         collate_fn=lambda x: x, multiprocessing_context="fork")
    for step, micro_batches in enumerate(loader):
        assert_same_batches(micro_batches, batches[step])


def test_unmasked_shards(tokenizer, tmp_path):
    unmasked = create_training_instances(random_corpus(10, 0), tokenizer, max_seq_length=MAX_LEN,
                                         dynamic_masking=True)
    write_shards(unmasked, tmp_path / "dyn", tokenizer)
    ds = PretrainingShards(tmp_path / "dyn")
    assert not ds.masked and not any(i.masked_lm_positions for i in ds)
    (batch,) = step_batches(ds, 0, 1, MaskingSpec.from_tokenizer(tokenizer))[0][:1]
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_shard_errors(shard_dir, static_instances, tokenizer, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_shards(static_instances[:5], shard_dir, tokenizer)
    write_shards(static_instances[:50], tmp_path / "a", tokenizer, instances_per_shard=10)
    write_shards(static_instances[:7], tmp_path / "a", tokenizer, instances_per_shard=10, overwrite=True)
    assert sorted(os.listdir(tmp_path / "a")) == ["index.json", "shard-00000.npz", "tokenizer_config.json",
                                                  "vocab.txt"]
    assert list(PretrainingShards(tmp_path / "a")) == static_instances[:7]
    os.remove(tmp_path / "a" / "index.json")
    with pytest.raises(FileNotFoundError, match="interrupted"):
        PretrainingShards(tmp_path / "a")
    with pytest.raises(ValueError, match="no instances"):
        write_shards([], tmp_path / "b", tokenizer)
    bad = TrainingInstance([2, 999, 3, 5, 3], [0, 0, 0, 1, 1], False, [1], [999])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_shards([bad], tmp_path / "c", tokenizer)
    other = make_tokenizer(WORD_VOCAB[:-1] + ["zebra"], tmp_path / "other")
    with pytest.raises(ValueError, match="different vocabulary"):
        PretrainingShards(shard_dir, tokenizer=other)


# ----------------------------------------------------------------------------------------------------
# The built-in corpus with the default vocabulary (the real thing the pretraining CLI uses)

@pytest.fixture(scope="module")
def builtin():
    from minibert.data.corpus import builtin_documents
    from minibert.tokenizer.train import default_vocab_dir
    return builtin_documents(), BertTokenizer.from_pretrained(default_vocab_dir())


@pytest.mark.slow
@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_builtin_corpus_statistics(builtin, whole_word_mask):
    documents, tokenizer = builtin
    instances = list(create_training_instances(documents, tokenizer, max_seq_length=128, dupe_factor=1,
                                               whole_word_mask=whole_word_mask, seed=12345))
    stats = data_statistics(instances, tokenizer)
    n, m = stats["num_instances"], stats["num_predicted"]
    assert n > 2000 and stats["max_length"] <= 128
    mean_maskable = m / stats["masking_rate"] / n
    if whole_word_mask:
        assert stats["whole_word_fraction"] == 1.0
        assert 0.15 - 1 / mean_maskable < stats["masking_rate"] <= 0.15 + 0.5 / mean_maskable
    else:
        assert stats["whole_word_fraction"] < 0.2
        assert abs(stats["masking_rate"] - 0.15) <= 0.5 / mean_maskable
    for name, p in (("mask_fraction", 0.8), ("random_fraction", 0.1), ("kept_fraction", 0.1)):
        assert abs(stats[name] - p) < 4 * math.sqrt(p * (1 - p) / m), (name, stats[name])
    assert stats["special_masked"] == 0
    # NotNext share = 0.5 + 0.5 q, q = share of one-sentence chunks (always NotNext), which the instances do
    # not reveal; so only the lower bound here (the coin itself: test_nsp_coin_is_fair).
    assert stats["random_next_fraction"] > 0.5 - 4 * math.sqrt(0.25 / n)
    # Chunks fill the sequence except a document's last one and the 10% short targets; the built-in corpus
    # has many short documents (a median module docstring is a few hundred tokens), so ~77-84% is expected.
    assert stats["mean_length"] > 0.7 * 128


@pytest.mark.slow
def test_show_your_work_entry_point(builtin, capsys, tmp_path):
    from minibert.data.__main__ import main
    stats = main(["--max-documents", "80", "--max-seq-length", "64", "--show", "2", "--whole-word-mask",
                  "--out", str(tmp_path / "shards")])
    out = capsys.readouterr().out
    assert "instance 1:" in out and "→" in out and "masking rate" in out
    assert stats["whole_word_fraction"] == 1.0 and stats["max_length"] <= 64
    assert len(PretrainingShards(tmp_path / "shards")) == stats["num_instances"]
