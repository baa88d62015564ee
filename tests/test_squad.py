"""SQuAD data: reading, windowed features against HF's QA preprocessing, max context, n-best answers, EM/F1.

The oracle for features is HF's documented recipe (the course's "Question answering" chapter and
run_qa.py): ``BertTokenizerFast(question, context, truncation="only_second", stride=...,
return_overflowing_tokens=True, return_offsets_mapping=True)``, then label each window by walking the
context offsets. It is re-written here from that description and run on a few hundred generated
examples with long contexts, answers at window edges, accents, capitals and CJK.
"""
import json
import pathlib
import random
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from minibert.train.finetune.squad import (SquadExample, SquadFeature, evaluate, exact_match_score, f1_score, main,
                                     make_features, normalize_answer, postprocess, read_squad)
from minibert.train.finetune.squad_features import doc_windows, max_context_windows
from minibert.tokenizer import SPECIAL_TOKENS, BertTokenizer

DATA = pathlib.Path(__file__).parent / "data"

WORDS = ("the a an of in on at to and or river city museum tower capital country world year summer bridge "
         "king queen war peace song book school station market garden forest mountain island harbour "
         "was is were built opened finished designed named founded crossed flows hosted visited "
         "first second largest oldest famous northern ancient modern 1889 1900 2024 3.14 42nd").split()
NAMES = ("Paris London Tokyo Danube Eiffel Gustave Louvre Seine Oslo Müller Zoë Ångström Café Crème "
         "Łódź Škoda Renée Ærø São Paulo Bogotá naïve façade résumé").split()
CJK = "東京大学北京中国日本語漢字山川"
PUNCT = ",.;:!?()'\"-"


def _vocab(path):
    """Specials, every character (+ ## form), whole words and word pieces of the generator's words."""
    chars = sorted(set("".join(WORDS + NAMES) + CJK + PUNCT + "abcdefghijklmnopqrstuvwxyz0123456789")
                   | set("".join(NAMES).lower()) | {"a", "e", "o", "c", "l", "s", "z", "ae", "u"})
    tokens = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars if c.isalnum()]
    words = set()
    for w in WORDS + NAMES:
        for v in (w, w.lower()):
            words |= {v[:k] for k in range(2, len(v) + 1)} | {"##" + v[k:] for k in range(1, len(v) - 1)}
    words |= {"cafe", "creme", "lodz", "skoda", "renee", "aero", "sao", "bogota", "naive", "facade", "resume",
              "muller", "zoe", "angstrom", "##e", "##o"}
    tokens += sorted(words - set(tokens))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("squad_vocab")
    _vocab(path / "vocab.txt")
    return path


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return BertTokenizer.from_pretrained(vocab_dir)


def _text(rng, n_words):
    """Random words, names (accents, capitals) and CJK runs joined by spaces and punctuation."""
    parts = []
    for _ in range(n_words):
        r = rng.random()
        if r < 0.6:
            w = rng.choice(WORDS)
            parts.append(w.capitalize() if rng.random() < 0.2 else w)
        elif r < 0.85:
            parts.append(rng.choice(NAMES))
        else:
            parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 3))))
        parts.append(rng.choice(PUNCT) + " " if rng.random() < 0.12 else " ")
    return "".join(parts).strip()


def _example(rng, index, hf, max_seq_length, doc_stride, max_query_length):
    """A generated example; about a third have the answer's first or last token on a window's edge."""
    context = _text(rng, rng.randint(20, 160))
    question = _text(rng, rng.choice((3, 5, 8, 40)))  # 40 words: longer than max_query_length
    if rng.random() < 0.1:
        return SquadExample(f"q{index}", question, context, [], is_impossible=True)
    offsets = hf(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n = len(offsets)
    keep = max_seq_length - 3 - min(max_query_length, len(hf(question, add_special_tokens=False)["input_ids"]))
    if rng.random() < 0.4 and n > keep:
        # Window k holds context tokens [k * step, k * step + keep); pick one of its two edge tokens.
        k = rng.randrange((n - keep) // (keep - doc_stride) + 1)
        first_token, last_token = k * (keep - doc_stride), k * (keep - doc_stride) + keep - 1
        if rng.random() < 0.5:
            first, last = first_token, min(n - 1, first_token + rng.randint(0, 3))
        else:
            first, last = max(0, last_token - rng.randint(0, 3)), last_token
    else:
        first = rng.randrange(n)
        last = min(n - 1, first + rng.randint(0, 4))
    start, end = offsets[first][0], offsets[last][1]
    return SquadExample(f"q{index}", question, context, [{"text": context[start:end], "answer_start": start}])


def _oracle(hf, example, max_seq_length, doc_stride, max_query_length):
    """HF's QA preprocessing, as documented: one dict per window (input ids, offsets or None, labels)."""
    question = example.question
    q = hf(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(q["input_ids"]) > max_query_length:  # run_qa.py has no query limit; cut the text after the token
        question = question[:q["offset_mapping"][max_query_length - 1][1]]
        assert len(hf(question, add_special_tokens=False)["input_ids"]) == max_query_length
    enc = hf(question, example.context, truncation="only_second", max_length=max_seq_length, stride=doc_stride,
             return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    windows = []
    for i in range(len(enc["input_ids"])):
        sequence_ids = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids)]
        start_position = end_position = 0
        if example.answers and not example.is_impossible:
            start_char = example.answers[0]["answer_start"]
            end_char = start_char + len(example.answers[0]["text"])
            context_start = sequence_ids.index(1)
            context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
            if offsets[context_start][0] <= start_char and offsets[context_end][1] >= end_char:
                idx = context_start
                while idx <= context_end and offsets[idx][0] <= start_char:
                    idx += 1
                start_position = idx - 1
                idx = context_end
                while idx >= context_start and offsets[idx][1] >= end_char:
                    idx -= 1
                end_position = idx + 1
        windows.append(dict(input_ids=enc["input_ids"][i], token_type_ids=enc["token_type_ids"][i],
                            attention_mask=enc["attention_mask"][i], offsets=offsets,
                            start_position=start_position, end_position=end_position))
    return windows


def _context_windows(hf, example, windows):
    """The [start, stop) context-token range of each oracle window, found in the context's own tokens."""
    offsets = [tuple(o) for o in hf(example.context, add_special_tokens=False,
                                    return_offsets_mapping=True)["offset_mapping"]]
    ranges = []
    for w in windows:
        piece = [o for o in w["offsets"] if o is not None]
        start = offsets.index(piece[0], ranges[-1][0] + 1 if ranges else 0)
        assert offsets[start:start + len(piece)] == piece
        ranges.append((start, start + len(piece)))
    return ranges


def _brute_force_max_context(ranges, position):
    """The original's rule, exactly (fractions): best min(left, right) + 0.01 * length, first on ties."""
    best, best_window = None, None
    for index, (start, stop) in enumerate(ranges):
        if start <= position < stop:
            score = min(position - start, stop - 1 - position) + Fraction(stop - start, 100)
            if best is None or score > best:
                best, best_window = score, index
    return best_window


@pytest.mark.parametrize("cased", [False, True])
def test_features_match_hf_question_answering_preprocessing(vocab_dir, cased):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir), do_lower_case=not cased)
    ours = BertTokenizer.from_pretrained(vocab_dir, do_lower_case=not cased)
    rng = random.Random(20161016 + cased)  # SQuAD's arXiv date
    counts = dict(examples=0, windows=0, labelled=0, at_edge=0, multi_window=0, truncated_questions=0)
    for n in range(150):
        max_seq_length, doc_stride = rng.choice(((48, 8), (64, 16), (40, 0), (96, 32), (64, 1)))
        max_query_length = rng.choice((8, 12))
        example = _example(rng, n, hf, max_seq_length, doc_stride, max_query_length)
        want = _oracle(hf, example, max_seq_length, doc_stride, max_query_length)
        got = make_features([example], ours, max_seq_length, doc_stride, max_query_length)
        assert len(got) == len(want), example
        ranges = _context_windows(hf, example, want)
        for w, (g, expected) in enumerate(zip(got, want)):
            for field, value in expected.items():
                assert getattr(g, field) == value, (field, example, w)
            # max context, brute force over the oracle's windows
            first = next(i for i, o in enumerate(g.offsets) if o is not None)
            for i, o in enumerate(g.offsets):
                scored_here = o is not None and _brute_force_max_context(ranges, ranges[w][0] + i - first) == w
                assert g.token_is_max_context[i] == scored_here, (example, w, i)
            if g.start_position:
                counts["labelled"] += 1
                context = [i for i, o in enumerate(g.offsets) if o is not None]
                counts["at_edge"] += g.start_position == context[0] or g.end_position == context[-1]
                answer = example.answers[0]
                span = example.context[g.offsets[g.start_position][0]:g.offsets[g.end_position][1]]
                assert span == answer["text"]  # generated answers are token-aligned
        counts["examples"] += 1
        counts["windows"] += len(got)
        counts["multi_window"] += len(got) > 1
        counts["truncated_questions"] += len(ours.tokenize(example.question)) > max_query_length
    print(f"\nsquad features ({'cased' if cased else 'uncased'}): {counts}")
    assert counts["multi_window"] > 60 and counts["at_edge"] > 40 and counts["truncated_questions"] > 20


def test_max_context_hand_worked_example():
    # "rain fell on the old roof of the quiet house all night": 12 tokens, windows of 5 overlapping by 2.
    windows = doc_windows(12, 5, 2)
    assert windows == [(0, 5), (3, 8), (6, 11), (9, 12)]
    # token 3 "the": [0,5) min(3,1)=1 beats [3,8) min(0,4)=0; token 4 "old": min(4,0)=0 vs min(1,3)=1;
    # token 7 "the": [3,8) min(4,0)=0 vs [6,11) min(1,3)=1; token 10 "all": [6,11) min(4,0) vs [9,12) min(1,1).
    assert max_context_windows(windows, 12) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    # Equal min(left, right): the longer window wins (the + 0.01 * length term), then the earlier one.
    assert max_context_windows([(0, 4), (1, 6)], 6)[2] == 1   # min 1 in both, lengths 4 and 5
    assert max_context_windows([(0, 4), (1, 5)], 5)[2] == 0   # min 1 in both, equal lengths
    assert doc_windows(4, 5, 2) == [(0, 4)]
    assert doc_windows(10, 4, 0) == [(0, 4), (4, 8), (8, 10)]


def test_max_context_brute_force_over_random_windows():
    rng = random.Random(7)
    for _ in range(300):
        n, length = rng.randint(1, 60), rng.randint(2, 20)
        stride = rng.randint(0, length - 1)
        windows = doc_windows(n, length, stride)
        assert windows[0][0] == 0 and windows[-1][1] == n
        assert all(b[0] - a[0] == length - stride for a, b in zip(windows, windows[1:]))
        best = max_context_windows(windows, n)
        assert best == [_brute_force_max_context(windows, p) for p in range(n)]


def test_labels_use_first_answer_strip_spaces_and_split_characters(tok):
    context = "Ann met Bob in  Oslo\u00a0 in 1889."
    example = SquadExample("x", "who?", context, [{"text": " Oslo\u00a0", "answer_start": 15},
                                                  {"text": "1889", "answer_start": 25}])
    (feature,) = make_features([example], tok, max_seq_length=32, doc_stride=4, max_query_length=8)
    s, e = feature.start_position, feature.end_position
    assert context[feature.offsets[s][0]:feature.offsets[e][1]] == "Oslo"
    assert tok.convert_ids_to_tokens(feature.input_ids[s:e + 1]) == ["oslo"]
    # One character, two tokens: "İ" lower-cases to "i" + U+0307, both spanning it; the label covers both.
    dotted = BertTokenizer({t: i for i, t in enumerate(list(SPECIAL_TOKENS) + ["in", "i", "##\u0307", "city"])},
                           do_lower_case=True, strip_accents=False)
    example = SquadExample("z", "in?", "in İ city", [{"text": "İ", "answer_start": 3}])
    (feature,) = make_features([example], dotted, max_seq_length=16, doc_stride=2, max_query_length=4)
    assert feature.offsets[4:7] == [(0, 2), (3, 4), (3, 4)]  # [CLS] in [UNK] [SEP] | in i ##̇ city [SEP]
    assert (feature.start_position, feature.end_position) == (5, 6)
    # Both answer tokens inside one window; an answer over the window edge labels [CLS] in that window.
    long = SquadExample("y", "who?", "river " * 40 + "Oslo tower", [{"text": "Oslo tower", "answer_start": 240}])
    features = make_features([long], tok, max_seq_length=16, doc_stride=3, max_query_length=4)
    labelled = [f for f in features if f.start_position]
    assert len(labelled) == 1 and labelled[0] is features[-1]
    assert all((f.start_position, f.end_position) == (0, 0) for f in features[:-1])


def _hand_features():
    """Two windows of "Ann met Bob in Oslo." for the question "who met?" (see the postprocess test)."""
    q = [None] * 5  # [CLS] who met ? [SEP]
    window_1 = SquadFeature(0, list(range(14)), [0] * 5 + [1] * 7 + [0] * 2, [1] * 12 + [0] * 2,
                            q + [(0, 3), (4, 7), (8, 11), (12, 14), (15, 19), (19, 20)] + [None] * 3,
                            [False] * 5 + [True] * 5 + [False] * 4, 0, 0)
    window_2 = SquadFeature(0, list(range(14)), [0] * 5 + [1] * 4 + [0] * 5, [1] * 9 + [0] * 5,
                            q + [(12, 14), (15, 19), (19, 20)] + [None] * 6,
                            [False] * 7 + [True] + [False] * 6, 0, 0)
    return [SquadExample("oslo", "who met?", "Ann met Bob in Oslo.", [{"text": "Bob", "answer_start": 8}])], \
        [window_1, window_2]


def test_postprocess_hand_computed_nbest():
    examples, features = _hand_features()
    #                pos:  0    1    2    3    4    5    6    7    8    9   10   11   12   13
    #                    CLS  who  met   ?  SEP  ann  met  bob   in oslo    . SEP  pad  pad
    start_1 = np.array([1.0, 0.1, 6.0, 0.2, 0.3, 0.5, 0.4, 5.0, 0.6, 4.0, 3.0, 0.7, 7.0, 0.8])
    end_1 = np.array([2.0, 0.1, 0.2, 0.3, 6.5, 0.4, 3.5, 0.5, 0.6, 5.0, 4.5, 0.7, 0.8, 8.0])
    #                    CLS  who  met   ?  SEP   in oslo    . SEP  pad...
    start_2 = np.array([4.0, 0.1, 0.2, 0.3, 0.4, 0.5, 8.2, 9.0, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    end_2 = np.array([4.0, 0.1, 0.2, 0.3, 0.4, 0.05, 0.2, 0.5, 0.01, 0.02, 0.03, 0.04, 0.06, 0.07])
    predictions, nbest = postprocess(examples, features, [start_1, start_2], [end_1, end_2], n_best_size=5,
                                     max_answer_length=3)
    # Window 1, top-5 starts 12 (pad), 2 (question), 7 "bob", 9 "oslo", 10 "." (not max context: rejected);
    # top-5 ends 13 (pad), 4 ([SEP]), 9, 10, 6. bob..oslo = 5 + 5 = 10; bob..'.' is 4 tokens (too long);
    # bob..met ends before it starts; oslo..oslo = 4 + 5 = 9; oslo..'.' = 4 + 4.5 = 8.5.
    # Window 2: "." (9.0, max context) .. "." (0.5) = 9.5; "oslo" starts at 8.2 but is not max context here
    # (scored, it would give "Oslo." 8.7).
    assert [(c["text"], c["answer_start"], c["start_logit"] + c["end_logit"]) for c in nbest["oslo"]] == \
        [("Bob in Oslo", 8, 10.0), (".", 19, 9.5), ("Oslo", 15, 9.0), ("Oslo.", 15, 8.5)]
    scores = np.array([10.0, 9.5, 9.0, 8.5])
    np.testing.assert_allclose([c["probability"] for c in nbest["oslo"]], np.exp(scores) / np.exp(scores).sum(),
                               rtol=1e-12)
    assert predictions == {"oslo": "Bob in Oslo"}  # capitals kept: cut from the context, not the tokens
    predictions, nbest = postprocess(examples, features, [start_1, start_2], [end_1, end_2], n_best_size=2,
                                     max_answer_length=1)
    # Two starts and ends per window: window 1 starts at padding and in the question: nothing. Window 2
    # starts at "." and "oslo" (not max context), ends at [CLS] (4.0) and ".": only "." = 9.5.
    assert [c["text"] for c in nbest["oslo"]] == ["."] and predictions == {"oslo": "."}
    predictions, nbest = postprocess(examples, features, [start_1, start_2], [end_1, end_2], n_best_size=1)
    assert nbest["oslo"] == [] and predictions == {"oslo": ""}  # no valid span at all


def test_postprocess_v2_null_threshold():
    examples, features = _hand_features()
    rng = np.random.default_rng(0)
    start = rng.uniform(-1, 1, (2, 14))
    end = rng.uniform(-1, 1, (2, 14))
    start[0, 7], end[0, 9] = 5.0, 4.0   # best span "Bob in Oslo": 9.0
    start[:, 0], end[:, 0] = [4.0, 6.0], [3.5, 5.0]  # null scores 7.5 and 11: the lower one counts
    kwargs = dict(version_2_with_negative=True, n_best_size=5, max_answer_length=3)
    # null - best = 7.5 - 9 = -1.5: the null answer wins when that exceeds the threshold (strictly)
    for threshold, expected in ((0.0, "Bob in Oslo"), (-1.5, "Bob in Oslo"), (-1.55, ""), (-5.0, "")):
        predictions, nbest = postprocess(examples, features, start, end, null_score_diff_threshold=threshold,
                                         **kwargs)
        assert predictions["oslo"] == expected, threshold
    null = [c for c in nbest["oslo"] if c["text"] == ""]
    assert null == [{"text": "", "answer_start": None, "start_logit": 4.0, "end_logit": 3.5,
                     "probability": null[0]["probability"]}]
    assert nbest["oslo"][0]["text"] == "Bob in Oslo" and nbest["oslo"][1] is null[0]
    start[0, 0] = 6.0  # null 9.5 beats the span by 0.5
    assert postprocess(examples, features, start, end, **kwargs)[0]["oslo"] == ""
    assert postprocess(examples, features, start, end, null_score_diff_threshold=0.6, **kwargs)[0]["oslo"] != ""
    # v1.1 ignores the null score
    assert postprocess(examples, features, start, end, n_best_size=5, max_answer_length=3)[0]["oslo"] != ""


def test_postprocess_keeps_the_best_of_a_repeated_text():
    examples, features = _hand_features()
    features[1].token_is_max_context[6] = True  # "oslo" is now scored in window 2 as well
    start, end = np.zeros((2, 14)), np.zeros((2, 14))
    start[0, 9], end[0, 9] = 2.0, 2.0   # "Oslo" from window 1: 4
    start[1, 6], end[1, 6] = 3.0, 3.0   # "Oslo" from window 2: 6
    _, nbest = postprocess(examples, features, start, end)
    oslo = [c for c in nbest["oslo"] if c["text"] == "Oslo"]
    assert len(oslo) == 1 and oslo[0]["start_logit"] + oslo[0]["end_logit"] == 6.0


@pytest.mark.parametrize("version_2", [False, True])
def test_round_trip_labels_to_logits_to_answers(tok, version_2):
    """Features, then logits peaked on the labels, then postprocess: every answer comes back exactly."""
    rng = random.Random(3 + version_2)
    examples = []
    for i in range(60):
        context = _text(rng, rng.randint(10, 120))
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
        start = end = 0
        while not normalize_answer(context[start:end]):  # v1.1 F1 of "the" against "the" is 0, officially
            a = rng.randrange(len(words))
            b = min(len(words) - 1, a + rng.randint(0, 2))
            start, end = words[a][0], words[b][1]
        if version_2 and rng.random() < 0.3:
            examples.append(SquadExample(f"v{i}", _text(rng, 4), context, [], is_impossible=True))
        else:
            examples.append(SquadExample(f"v{i}", _text(rng, 4), context,
                                         [{"text": context[start:end], "answer_start": start}]))
    features = make_features(examples, tok, max_seq_length=64, doc_stride=24, max_query_length=12)
    noise = np.random.default_rng(5)
    start_logits = noise.normal(0, 1, (len(features), 64))
    end_logits = noise.normal(0, 1, (len(features), 64))
    for i, f in enumerate(features):
        start_logits[i, f.start_position] += 20
        end_logits[i, f.end_position] += 20
    predictions, nbest = postprocess(examples, features, start_logits, end_logits, max_answer_length=64,
                                     version_2_with_negative=version_2)
    for example in examples:
        for c in nbest[example.qas_id]:
            if c["text"]:
                assert example.context[c["answer_start"]:c["answer_start"] + len(c["text"])] == c["text"]
    assert {f.example_index for f in features} == set(range(len(examples)))
    assert {e.qas_id: e.answers[0]["text"] if e.answers else "" for e in examples} == predictions
    result = evaluate(examples, predictions)
    assert result["exact_match"] == result["f1"] == 100.0 and result["total"] == len(examples)
    assert len(features) > 1.5 * len(examples)  # many examples span several windows
    if version_2:
        assert result["NoAns_total"] > 5 and result["HasAns_total"] > 20


def test_normalize_answer_and_scores_by_hand():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("a cat, an owl") == "cat owl"
    assert normalize_answer("Theatre anthem") == "theatre anthem"  # articles only as whole words
    assert normalize_answer("¿Qué?") == "¿qué"  # the scripts drop ASCII punctuation only
    assert exact_match_score("the Eiffel Tower", "Eiffel  Tower.") == 1.0
    assert exact_match_score("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    # "gustave eiffels company" vs "eiffels company": 2 shared, P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Gustave Eiffel's company", "Eiffel's company") == pytest.approx(0.8, abs=1e-15)
    # shared words count with multiplicity: "cat cat" vs "cat": P = 1/2, R = 1
    assert f1_score("the cat the cat", "a cat") == pytest.approx(2 / 3, abs=1e-15)
    assert f1_score("dog", "cat") == 0.0
    # empty sides: v1.1 gives 0 always, v2.0 1 when both are empty
    assert f1_score("", "the") == 0.0 and f1_score("", "the", version_2_with_negative=True) == 1.0
    assert f1_score("", "cat", version_2_with_negative=True) == 0.0


def test_evaluate_v1_by_hand():
    examples = [SquadExample("a", "q", "c", [{"text": "1889", "answer_start": 0},
                                             {"text": "in 1889", "answer_start": 0}]),
                SquadExample("b", "q", "c", [{"text": "Eiffel's company", "answer_start": 0}]),
                SquadExample("c", "q", "c", [{"text": "The Louvre", "answer_start": 0},
                                             {"text": "Musée du Louvre", "answer_start": 0}]),
                SquadExample("d", "q", "c", [{"text": "three times", "answer_start": 0}])]
    predictions = {"a": "in 1889.", "b": "Gustave Eiffel's company", "c": "the Musée du Louvre museum",
                   "zzz": "ignored"}
    # a: EM 1 (second gold). b: F1 0.8. c: golds "louvre" (P 1/4, R 1 -> 0.4) and "musée du louvre"
    # (P 3/4, R 1 -> 6/7): 6/7. d: missing, 0.
    result = evaluate(examples, predictions)
    assert result == {"exact_match": 25.0, "f1": pytest.approx(100 * (1 + 0.8 + 6 / 7) / 4, abs=1e-12),
                      "total": 4, "missing": 1}


def test_evaluate_v2_by_hand():
    examples = [SquadExample("has1", "q", "c", [{"text": "ten", "answer_start": 0}]),
                SquadExample("has2", "q", "c", [{"text": "the Black Forest", "answer_start": 0}]),
                SquadExample("no1", "q", "c", [], is_impossible=True),
                SquadExample("no2", "q", "c", [], is_impossible=True),
                SquadExample("has3", "q", "c", [{"text": "the", "answer_start": 0}])]  # normalises to ''
    predictions = {"has1": "ten", "has2": "Black", "no1": "", "no2": "Danube", "has3": ""}
    # has1 1/1; has2 EM 0, F1 P 1 R 1/2 = 2/3; no1 1/1; no2 0/0; has3: gold dropped -> expects '' -> 1/1
    result = evaluate(examples, predictions)
    assert result == pytest.approx({"exact_match": 60.0, "f1": 100 * (1 + 2 / 3 + 1 + 0 + 1) / 5, "total": 5,
                                    "missing": 0, "HasAns_exact_match": 100 * 2 / 3,
                                    "HasAns_f1": 100 * (1 + 2 / 3 + 1) / 3, "HasAns_total": 3,
                                    "NoAns_exact_match": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}, abs=1e-12)
    # The same file under the v1.1 rules: has3's gold "the" stays and '' does not match it in F1.
    v1 = evaluate([e for e in examples if not e.is_impossible], predictions, version_2_with_negative=False)
    assert v1["exact_match"] == pytest.approx(100 * 2 / 3, abs=1e-12)  # has1, and has3: '' == normalised "the"
    assert v1["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3, abs=1e-12)


def test_read_squad_v1_and_v2_samples():
    v1 = read_squad(DATA / "squad_v1_sample.json")
    assert [e.qas_id for e in v1] == ["paris-1", "paris-2", "paris-3", "tokyo-1"]
    assert v1[1].answers[0] == {"text": "The Musée du Louvre", "answer_start": 242}
    assert not any(e.is_impossible for e in v1) and v1[3].context.startswith("Tokyo (東京)")
    v2 = read_squad(DATA / "squad_v2_sample.json")
    assert [e.is_impossible for e in v2] == [False, False, True, True] and v2[2].answers == []
    for e in v1 + v2:
        for a in e.answers:
            assert e.context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]


def _write(tmp_path, content, name="bad.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _squad(qas, context="Ann met Bob in Oslo."):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


QA = {"id": "q1", "question": "Who?", "answers": [{"text": "Bob", "answer_start": 8}]}


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not UTF-8"),
    ("{\"data\": [", "not valid JSON"),
    ({"version": "1.1"}, "'data' is a list"),
    ({"data": [{"title": "t"}]}, "'paragraphs' is missing"),
    (_squad([QA], context="  "), "context is empty"),
    (_squad([dict(QA, question=" ")]), "question 'q1': the question is empty"),
    (_squad([dict(QA, id=7)]), "'id' must be a string, got 7"),
    (_squad([QA, QA]), "question 'q1' appears twice"),
    (_squad([dict(QA, answers=[{"text": "Bob", "answer_start": 30}])]), "q1' answer 0: answer_start=30 puts"),
    (_squad([dict(QA, answers=[{"text": "Bob", "answer_start": "8"}])]), "'answer_start' must be an integer, got \"8\""),
    (_squad([dict(QA, answers=[{"text": "", "answer_start": 8}])]), "answer text is empty"),
    (_squad([dict(QA, is_impossible=True)]), "is_impossible but lists answers"),
    (_squad([]), "holds no questions"),
])
def test_read_squad_rejects_malformed_files(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        read_squad(path)
    assert str(path) in str(info.value)


def test_answer_start_mismatch_is_skipped_in_training_kept_for_evaluation(tmp_path, tok):
    qas = [QA, dict(QA, id="q2", answers=[{"text": "Bob", "answer_start": 4}])]  # context[4:7] is "met"
    examples = read_squad(_write(tmp_path, _squad(qas)))  # evaluation compares texts only: accepted
    with pytest.warns(UserWarning, match="skipped 1 of 2 training examples .* 'q2'"):
        features = make_features(examples, tok, 32, 4, 8)
    assert [f.example_index for f in features] == [0]
    features = make_features(examples, tok, 32, 4, 8, training=False)
    assert [(f.example_index, f.start_position > 0) for f in features] == [(0, True), (1, False)]
    with pytest.raises(ValueError, match="no training example has an answer_start"):
        make_features(examples[1:], tok, 32, 4, 8)


def test_make_features_rejects_bad_input(tok):
    example = SquadExample("q1", "Who?", "Ann met Bob in Oslo.", [{"text": "Bob", "answer_start": 8}])
    with pytest.raises(ValueError, match="doc_stride .* must be smaller than max_seq_length - max_query_length"):
        make_features([example], tok, max_seq_length=32, doc_stride=21, max_query_length=8)
    with pytest.raises(ValueError, match="max_seq_length must be a positive int"):
        make_features([example], tok, max_seq_length=0)
    unlabelled = SquadExample("q2", "Who?", "Ann met Bob.", [])
    with pytest.raises(ValueError, match="'q2' has no answer and is not marked is_impossible"):
        make_features([unlabelled], tok, 32, 4, 8)
    assert len(make_features([unlabelled], tok, 32, 4, 8, training=False)) == 1
    with pytest.raises(ValueError, match="'q3': the context has no tokens"):
        make_features([SquadExample("q3", "Who?", "\u200b\x00", [])], tok, 32, 4, 8, training=False)
    no_pad = BertTokenizer({t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "ann"])})
    with pytest.raises(ValueError, match="no \\[PAD\\]"):
        make_features([example], no_pad, 32, 4, 8)


def test_postprocess_and_evaluate_reject_bad_input():
    examples, features = _hand_features()
    good = np.zeros((2, 14))
    with pytest.raises(ValueError, match="start_logits has 1 rows but there are 2 features"):
        postprocess(examples, features, good[:1], good)
    with pytest.raises(ValueError, match=r"end_logits\[1\] has shape \(13,\), expected \(14,\)"):
        postprocess(examples, features, good, [good[0], good[1, :13]])
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        postprocess(examples, features, bad, good)
    with pytest.raises(ValueError, match="has no features"):
        postprocess(examples + [SquadExample("x", "q", "c", [])], features, good, good)
    with pytest.raises(ValueError, match="example_index=0 does not index the 0 examples"):
        postprocess([], features, good, good)
    with pytest.raises(ValueError, match="n_best_size must be a positive int"):
        postprocess(examples, features, good, good, n_best_size=0)
    with pytest.raises(ValueError, match="must be a string"):
        evaluate(examples, {"oslo": 3})
    with pytest.raises(ValueError, match="'x' has no gold answers"):
        evaluate([SquadExample("x", "q", "c", [])], {})


def test_logits_may_be_a_torch_tensor():
    torch = pytest.importorskip("torch")
    examples, features = _hand_features()
    start = torch.zeros(2, 14, requires_grad=True) + torch.arange(14.0)
    assert postprocess(examples, features, start, start)[0] == postprocess(
        examples, features, start.detach().numpy(), start.detach().numpy())[0]


def test_cli_evaluate_prints_official_metrics(tmp_path, capsys):
    predictions = _write(tmp_path, {"danube-1": "ten countries", "danube-2": "Black Forest", "danube-3": "",
                                    "danube-4": "the Black Sea"}, "predictions.json")
    assert main(["evaluate", str(DATA / "squad_v2_sample.json"), str(predictions)]) == 0
    result = json.loads(capsys.readouterr().out)
    # 1/1, 1/1 (articles dropped), 1/1 (no answer), 0/0
    assert result == {"exact_match": 75.0, "f1": 75.0, "total": 4, "missing": 0, "HasAns_exact_match": 100.0,
                      "HasAns_f1": 100.0, "HasAns_total": 2, "NoAns_exact_match": 50.0, "NoAns_f1": 50.0,
                      "NoAns_total": 2}
    with pytest.raises(ValueError, match="predictions must be a JSON object"):
        main(["evaluate", str(DATA / "squad_v2_sample.json"), str(_write(tmp_path, ["x"], "list.json"))])


def test_cli_features_shows_windows(vocab_dir):
    out = subprocess.run([sys.executable, "-m", "minibert.train.finetune.squad", "features", "--vocab", str(vocab_dir),
                          str(DATA / "squad_v1_sample.json")], capture_output=True, text=True, check=True).stdout
    assert "question 'paris-1': When was the Eiffel Tower finished?" in out
    assert out.count("\nwindow ") >= 3 and "*" in out
    assert "-> '1889'" in out and "label: 0..0 = [CLS]" in out


def test_read_squad_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="deep.json: nested too deeply"):
        read_squad(path)
