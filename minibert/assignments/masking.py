"""Assignment "masking": the data side of BERT pretraining (``data/masking.py``, ``data/instances.py``).

Masking is random, so a student's ``mask_tokens`` cannot be compared draw for draw with the library's
(any order of ``rng`` calls is a correct answer). Its check states the properties instead: the number of
positions, which tokens may be chosen, labels, whole words kept together, and the measured 80/10/10 split
over a few thousand predictions, with tolerances of about six standard deviations (a correct answer fails
less than once in 10^8 runs; a 70/15/15 split fails every time).
"""
from __future__ import annotations

import random

from minibert.assignments.base import Assignment, Task, assert_raises
from minibert.data import masking as PM
from minibert.data import instances as PI

MASKING, INSTANCES = "data/masking.py", "data/instances.py"


def _vocab(gen):
    """A random vocabulary: the five special tokens, words, and ``##`` continuation pieces."""
    words = [f"w{i}" for i in range(int(gen.integers(20, 40)))]
    pieces = [f"##p{i}" for i in range(int(gen.integers(10, 20)))]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + pieces
    order = [0, 1, 2, 3, 4] + list(5 + gen.permutation(len(tokens) - 5))  # specials first, as in vocab.txt
    return [tokens[i] for i in order]


def _sequence(gen, continuation_ids, ordinary_ids):
    """[CLS] A [SEP] B [SEP] as ids, with ## pieces following words."""
    def segment(n):
        ids = []
        while len(ids) < n:
            ids.append(int(gen.choice(ordinary_ids)))
            ids.extend(int(gen.choice(continuation_ids)) for _ in range(int(gen.integers(0, 3))))
        return ids
    cls_id, sep_id = 2, 3
    return [cls_id, *segment(int(gen.integers(5, 40))), sep_id, *segment(int(gen.integers(5, 40))), sep_id]


def _words(ids, spec):
    """Each word of ``ids`` as its list of positions (a ## piece joins the token before it)."""
    words = []
    for i, token in enumerate(ids):
        if token in spec.special_ids:
            continue
        if token in spec.continuation_ids and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def _check_mask_tokens(student, modules, gen):
    tokens = _vocab(gen)
    continuation = [i for i, t in enumerate(tokens) if t.startswith("##")]
    ordinary = [i for i, t in enumerate(tokens) if i > 4 and not t.startswith("##")]
    counts = {"mask": 0, "random": 0, "kept": 0}
    first_half = total = 0
    for whole_word in (False, True):
        spec = PM.MaskingSpec.from_vocab(tokens, whole_word_mask=whole_word, max_predictions_per_seq=8)
        seed = int(gen.integers(2 ** 31))
        for n in range(600):
            ids = _sequence(gen, continuation, ordinary)
            what = f"mask_tokens(whole_word_mask={whole_word}) on sequence {n}"
            masked, positions, labels = student(list(ids), spec, random.Random(seed + n))
            again = student(list(ids), spec, random.Random(seed + n))
            if (list(masked), list(positions), list(labels)) != (list(again[0]), list(again[1]), list(again[2])):
                raise AssertionError(f"{what}: the same rng seed gave different masks (draw only from `rng`)")
            if len(masked) != len(ids) or list(positions) != sorted(set(positions)):
                raise AssertionError(f"{what}: masked_ids must have the input's length and positions must be "
                                     f"sorted and unique; got positions {positions}")
            if any(ids[i] in spec.special_ids for i in positions):
                raise AssertionError(f"{what}: chose a special token ([CLS]/[SEP]/...) at {positions}")
            if list(labels) != [ids[i] for i in positions]:
                raise AssertionError(f"{what}: labels must be the original ids at the chosen positions")
            if any(masked[i] != ids[i] for i in range(len(ids)) if i not in set(positions)):
                raise AssertionError(f"{what}: a position that is not predicted was changed")
            maskable = sum(token not in spec.special_ids for token in ids)
            budget = min(spec.max_predictions_per_seq, max(1, round(maskable * spec.masked_lm_prob)))
            if whole_word:
                chosen, words = set(positions), _words(ids, spec)
                split = [w for w in words if 0 < len(chosen & set(w)) < len(w)]
                # A word is skipped only when it does not fit what is left of the budget, so at the end no
                # unchosen word fits (and a sequence of long words can end with fewer, even 0, positions).
                fits = [w for w in words if not chosen & set(w) and len(w) <= budget - len(positions)]
                if split or len(positions) > budget or fits:
                    raise AssertionError(f"{what}: whole words must be chosen whole, at most {budget} positions, "
                                         f"until no unchosen word fits; got {len(positions)} positions, split "
                                         f"words {split[:2]}, unchosen words that fit {fits[:2]}")
            elif len(positions) != budget:
                raise AssertionError(f"{what}: {maskable} maskable tokens need round(0.15 * n) capped at "
                                     f"{spec.max_predictions_per_seq} = {budget} predictions, got {len(positions)}")
            for i in positions:
                kind = ("mask" if masked[i] == spec.mask_token_id else "kept" if masked[i] == ids[i]
                        else "random")
                if kind == "random" and masked[i] not in spec.replacement_ids:
                    raise AssertionError(f"{what}: random replacement {masked[i]} is a special token")
                counts[kind] += 1
            candidates = [i for i, t in enumerate(ids) if t not in spec.special_ids]
            first_half += sum(i < candidates[len(candidates) // 2] for i in positions)
            total += len(positions)
    rates = {kind: count / total for kind, count in counts.items()}
    # A kept token that also happens to be drawn as its own random replacement counts as kept: +1/V or so.
    for kind, want, tol in (("mask", 0.8, 0.05), ("random", 0.1, 0.035), ("kept", 0.1, 0.035)):
        if abs(rates[kind] - want) > tol:
            raise AssertionError(f"mask_tokens: {total} predictions were {rates['mask']:.1%} [MASK] / "
                                 f"{rates['random']:.1%} random / {rates['kept']:.1%} kept; expected 80/10/10 "
                                 f"(+-{tol:.1%} on {kind})")
    if abs(first_half / total - 0.5) > 0.06:
        raise AssertionError(f"mask_tokens: {first_half / total:.1%} of the predictions fall in the first half of "
                             f"the sequences; every token must be equally likely to be chosen")


def _check_from_vocab(student, modules, gen):
    tokens = _vocab(gen)
    got = student(tokens, whole_word_mask=True)
    want = PM.MaskingSpec.from_vocab(tokens, whole_word_mask=True)
    for field in ("mask_token_id", "special_ids", "replacement_ids", "continuation_ids", "whole_word_mask",
                  "masked_lm_prob", "max_predictions_per_seq"):
        if getattr(got, field, None) != getattr(want, field):
            raise AssertionError(f"MaskingSpec.from_vocab: {field} = {getattr(got, field, None)!r}, expected "
                                 f"{getattr(want, field)!r}")
    assert_raises("MaskingSpec.from_vocab of a vocabulary without [MASK]", ValueError,
                  lambda: student([t for t in tokens if t != "[MASK]"]))


def _check_truncate_seq_pair(student, modules, gen):
    removed_front = removed = 0
    for n in range(300):
        a = list(range(int(gen.integers(1, 30))))
        b = list(range(100, 100 + int(gen.integers(1, 30))))
        limit = int(gen.integers(2, 50))
        got_a, got_b = list(a), list(b)
        student(got_a, got_b, limit, random.Random(int(gen.integers(2 ** 31))))
        want_a, want_b = list(a), list(b)
        PI.truncate_seq_pair(want_a, want_b, limit, random.Random(0))
        what = f"truncate_seq_pair(len(A)={len(a)}, len(B)={len(b)}, max_num_tokens={limit})"
        # Removing from the longer side (B on a tie) fixes the final lengths whatever the coin flips.
        if (len(got_a), len(got_b)) != (len(want_a), len(want_b)):
            raise AssertionError(f"{what}: lengths ({len(got_a)}, {len(got_b)}), expected "
                                 f"({len(want_a)}, {len(want_b)}): trim the longer side one token at a time, in place")
        for original, kept in ((a, got_a), (b, got_b)):
            start = original.index(kept[0]) if kept else 0
            if kept != original[start:start + len(kept)]:
                raise AssertionError(f"{what}: {kept} is not a contiguous piece of {original}")
            removed_front += start
            removed += len(original) - len(kept)
    if removed and abs(removed_front / removed - 0.5) > 0.06:
        raise AssertionError(f"truncate_seq_pair: {removed_front / removed:.1%} of the removed tokens came from the "
                             f"front; each removal must pick front or back with probability 1/2")


ASSIGNMENT = Assignment(
    name="masking",
    title="Pretraining data: truncation, the masking recipe, and whole-word masking",
    summary=("Write how BERT turns token ids into a masked-LM example: how a pair of segments is trimmed to "
             "fit, which vocabulary ids may be chosen or used as random replacements, and the masking itself: "
             "choose 15% of the non-special tokens (at most max_predictions_per_seq), make 80% of them [MASK], "
             "10% a random token and leave 10% unchanged, and with whole_word_mask choose a word's ## pieces "
             "together. Draw every random number from the `rng` argument."),
    tasks=(
        Task(INSTANCES, "truncate_seq_pair", 2, "300 random pairs: final lengths, contiguous pieces, front and back "
             "removals about equally often", _check_truncate_seq_pair),
        Task(MASKING, "MaskingSpec.from_vocab", 1, "every field against the reference on a random vocabulary; no "
             "[MASK] raises ValueError", _check_from_vocab),
        Task(MASKING, "mask_tokens", 5, "1,200 random sequences: counts, no special tokens, labels, whole words, "
             "reproducible for a seed, 80/10/10 within 5/3.5/3.5 points, positions uniform", _check_mask_tokens),
    ),
)
