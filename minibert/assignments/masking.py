"""Assignment "masking": the data side of BERT pretraining (``data/masking.py``, ``data/instances.py``).

Masking is random, so a student's ``mask_tokens`` cannot be compared draw for draw with the library's
(any order of ``rng`` calls is a correct answer). Its check states the properties instead: the number of
positions, which tokens may be chosen, labels, whole words kept together, and the measured 80/10/10 split
over a few thousand predictions, with tolerances of about six standard deviations (a correct answer fails
less than once in 10^8 runs; a 70/15/15 split fails every time).
"""
from __future__ import annotations

import random

from minibert.assignments.base import Assignment, Task
from minibert.assignments.sandbox import as_namespace
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
    """[CLS] A [SEP] B [SEP] as ids, with 0 to 2 ## pieces following each word."""
    def segment(n):
        words = gen.choice(ordinary_ids, n)  # drawn in bulk: at most n words are needed
        pieces = gen.integers(0, 3, n)
        tails = gen.choice(continuation_ids, (n, 2))
        ids = []
        for word, count, tail in zip(words, pieces, tails):
            if len(ids) >= n:
                break
            ids += [int(word), *map(int, tail[:count])]
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


def _check_mask_tokens(t, gen):
    tokens = _vocab(gen)
    continuation = [i for i, t_ in enumerate(tokens) if t_.startswith("##")]
    ordinary = [i for i, t_ in enumerate(tokens) if i > 4 and not t_.startswith("##")]
    counts = {"mask": 0, "random": 0, "kept": 0}
    first_half = total = 0
    for whole_word in (False, True):
        spec = PM.MaskingSpec.from_vocab(tokens, whole_word_mask=whole_word, max_predictions_per_seq=8)
        seed = int(gen.integers(2 ** 31))
        budget_case = "whole words, within the budget" if whole_word else "round(0.15 * n) positions"
        cases = ["same seed, same masks", "positions, labels, untouched tokens", budget_case]
        problems = {case: None for case in cases}

        def note(case, message):
            problems[case] = problems[case] or message

        with t.variant(f"whole_word_mask={whole_word}", cases) as v:
            sequences = [_sequence(gen, continuation, ordinary) for _ in range(600)]
            # All calls in one batch; the first 50 sequences twice, with the same seed (reproducibility).
            calls = [(list(ids), spec, random.Random(seed + n)) for n, ids in enumerate(sequences)]
            outputs = t.call_many(calls + [(list(ids), spec, random.Random(seed + n))
                                           for n, ids in enumerate(sequences[:50])])
            for n, ids in enumerate(sequences):
                what = f"sequence {n} ({len(ids)} ids)"
                masked, positions, labels = outputs[n]
                if n < 50 and (list(masked), list(positions), list(labels)) != tuple(list(a) for a in outputs[600 + n]):
                    note(cases[0], f"{what}: the same rng seed gave different masks (draw only from `rng`)")
                positions, masked = list(positions), list(masked)
                if len(masked) != len(ids) or positions != sorted(set(positions)):
                    note(cases[1], f"{what}: masked_ids must have the input's length and positions must be sorted "
                                   f"and unique; got positions {positions}")
                    continue
                if any(ids[i] in spec.special_ids for i in positions):
                    note(cases[1], f"{what}: chose a special token ([CLS]/[SEP]/...) at {positions}")
                if list(labels) != [ids[i] for i in positions]:
                    note(cases[1], f"{what}: labels must be the original ids at the chosen positions")
                if any(masked[i] != ids[i] for i in range(len(ids)) if i not in set(positions)):
                    note(cases[1], f"{what}: a position that is not predicted was changed")
                maskable = sum(token not in spec.special_ids for token in ids)
                budget = min(spec.max_predictions_per_seq, max(1, round(maskable * spec.masked_lm_prob)))
                if whole_word:
                    chosen, words = set(positions), _words(ids, spec)
                    split = [w for w in words if 0 < len(chosen & set(w)) < len(w)]
                    # A word is skipped only when it does not fit what is left of the budget, so at the end
                    # no unchosen word fits (and a sequence of long words can end with fewer, even 0).
                    fits = [w for w in words if not chosen & set(w) and len(w) <= budget - len(positions)]
                    if split or len(positions) > budget or fits:
                        note(budget_case, f"{what}: whole words must be chosen whole, at most {budget} positions, "
                                          f"until no unchosen word fits; got {len(positions)} positions, split "
                                          f"words {split[:2]}, unchosen words that fit {fits[:2]}")
                elif len(positions) != budget:
                    note(budget_case, f"{what}: {maskable} maskable tokens need round(0.15 * n) capped at "
                                      f"{spec.max_predictions_per_seq} = {budget} predictions, got {len(positions)}")
                for i in positions:
                    kind = ("mask" if masked[i] == spec.mask_token_id else "kept" if masked[i] == ids[i]
                            else "random")
                    if kind == "random" and masked[i] not in spec.replacement_ids:
                        note(cases[1], f"{what}: random replacement {masked[i]} is a special token")
                    counts[kind] += 1
                candidates = [i for i, token in enumerate(ids) if token not in spec.special_ids]
                first_half += sum(i < candidates[len(candidates) // 2] for i in positions)
                total += len(positions)
            for case in cases:
                v.check(case, problems[case] is None, problems[case] or "")
    with t.variant("all 1,200 sequences", ["80/10/10 split", "positions uniform"]) as v:
        rates = {kind: count / max(total, 1) for kind, count in counts.items()}
        # A kept token that also happens to be drawn as its own random replacement counts as kept: +1/V or so.
        off = [(kind, tol) for kind, want, tol in (("mask", 0.8, 0.05), ("random", 0.1, 0.035), ("kept", 0.1, 0.035))
               if abs(rates[kind] - want) > tol]
        v.check("80/10/10 split", total > 0 and not off,
                f"{total} predictions were {rates['mask']:.1%} [MASK] / {rates['random']:.1%} random / "
                f"{rates['kept']:.1%} kept; expected 80/10/10 (+-{off[0][1]:.1%} on {off[0][0]})" if off
                else "no predictions at all")
        share = first_half / max(total, 1)
        v.check("positions uniform", total > 0 and abs(share - 0.5) <= 0.06,
                f"{share:.1%} of the predictions fall in the first half of the sequences; every token must be "
                f"equally likely to be chosen")


def _check_from_vocab(t, gen):
    tokens = _vocab(gen)
    want = PM.MaskingSpec.from_vocab(tokens, whole_word_mask=True)
    fields = ("mask_token_id", "special_ids", "replacement_ids", "continuation_ids", "whole_word_mask",
              "masked_lm_prob", "max_predictions_per_seq")
    with t.variant("a random vocabulary", list(fields)) as v:
        got = as_namespace(t.call(tokens, whole_word_mask=True))
        for field in fields:
            value = getattr(got, field, None)
            v.check(field, value == getattr(want, field),
                    f"{value!r}, expected {getattr(want, field)!r}")
    with t.variant("a vocabulary without [MASK]", ["raises ValueError"]) as v:
        v.raises("raises ValueError", ValueError, [t_ for t_ in tokens if t_ != "[MASK]"])


def _check_truncate_seq_pair(t, gen):
    cases = ["final lengths", "contiguous pieces"]
    problems = {case: None for case in cases}
    removed_front = removed = 0
    with t.variant("300 random pairs", cases) as v:
        pairs = [(list(range(int(gen.integers(1, 30)))), list(range(100, 100 + int(gen.integers(1, 30)))),
                  int(gen.integers(2, 50))) for _ in range(300)]
        calls = [(list(a), list(b), limit, random.Random(int(gen.integers(2 ** 31)))) for a, b, limit in pairs]
        t.call_many(calls)  # trims the lists of `calls` in place, as the student's code did
        for (a, b, limit), (got_a, got_b, _, _) in zip(pairs, calls):
            want_a, want_b = list(a), list(b)
            PI.truncate_seq_pair(want_a, want_b, limit, random.Random(0))
            what = f"truncate_seq_pair(len(A)={len(a)}, len(B)={len(b)}, max_num_tokens={limit})"
            # Removing from the longer side (B on a tie) fixes the final lengths whatever the coin flips.
            if (len(got_a), len(got_b)) != (len(want_a), len(want_b)):
                problems["final lengths"] = problems["final lengths"] or (
                    f"{what}: lengths ({len(got_a)}, {len(got_b)}), expected ({len(want_a)}, {len(want_b)}): trim "
                    f"the longer side one token at a time, in place")
            for original, kept in ((a, got_a), (b, got_b)):
                start = original.index(kept[0]) if kept and kept[0] in original else 0
                if kept != original[start:start + len(kept)]:
                    problems["contiguous pieces"] = problems["contiguous pieces"] or (
                        f"{what}: {kept} is not a contiguous piece of {original}")
                    continue
                removed_front += start
                removed += len(original) - len(kept)
        for case in cases:
            v.check(case, problems[case] is None, problems[case] or "")
    with t.variant("all pairs", ["front and back equally often"]) as v:
        share = removed_front / removed if removed else 0.0
        v.check("front and back equally often", removed > 0 and abs(share - 0.5) <= 0.06,
                f"{share:.1%} of the removed tokens came from the front; each removal must pick front or back "
                f"with probability 1/2")


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
             "removals about equally often", _check_truncate_seq_pair, in_place=("tokens_a", "tokens_b"),
             may_change=("rng",),
             notebook=('a, b = list(range(10)), list(range(100, 104))\n'
                       'instances.truncate_seq_pair(a, b, 8, random.Random(0))\n'
                       'print(a, b)\n'
                       'assert (len(a), len(b)) == (4, 4), "trim the longer side, one token at a time"')),
        Task(MASKING, "MaskingSpec.from_vocab", 1, "every field against the reference on a random vocabulary; no "
             "[MASK] raises ValueError", _check_from_vocab,
             notebook=('spec = masking.MaskingSpec.from_vocab(TOKENS, whole_word_mask=True)\n'
                       'print(spec)\n'
                       'assert spec.mask_token_id == 4 and 4 not in spec.replacement_ids\n'
                       'assert spec.continuation_ids == {7, 8}')),
        Task(MASKING, "mask_tokens", 5, "1,200 random sequences: counts, no special tokens, labels, whole words, "
             "reproducible for a seed, 80/10/10 within 5/3.5/3.5 points, positions uniform", _check_mask_tokens,
             may_change=("rng",),
             notebook=('spec = masking.MaskingSpec.from_vocab(TOKENS)\n'
                       'ids = [2] + [5, 6, 7, 8, 9, 10] * 10 + [3]\n'
                       'kinds = collections.Counter()\n'
                       'for seed in range(300):\n'
                       '    masked, positions, labels = masking.mask_tokens(ids, spec, random.Random(seed))\n'
                       '    assert len(positions) == 9 and labels == [ids[i] for i in positions]\n'
                       '    kinds.update("mask" if masked[i] == 4 else "kept" if masked[i] == ids[i] else "random"\n'
                       '                 for i in positions)\n'
                       'print({kind: f"{n / sum(kinds.values()):.1%}" for kind, n in kinds.items()})\n'
                       'assert abs(kinds["mask"] / sum(kinds.values()) - 0.8) < 0.05')),
    ),
    notebook_setup='''\
import collections
import random

from minibert.assignments.notebook import load

masking, instances = load("masking.py"), load("instances.py")  # your files
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s", "##es", "sat", "mat"]
''',
    questions=(
        "Why are 10% of the chosen tokens left unchanged and 10% replaced by a random token, instead of "
        "always using [MASK]?",
        "With whole-word masking, why can a sequence end up with fewer predictions than its budget?",
    ),
)
