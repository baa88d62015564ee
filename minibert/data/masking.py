"""Masked-LM masking: pick ~15% of a sequence's tokens for the model to predict.

BERT (Devlin et al., 2018, sec. 3.1) chooses 15% of the WordPiece positions of each sequence; of the chosen
positions 80% become ``[MASK]``, 10% become a random token and 10% keep their token. The model is asked
to predict the original token at every chosen position. Why not always ``[MASK]``? Because ``[MASK]`` never
appears at fine-tuning time: the 10% random / 10% unchanged cases force the model to keep a good
representation of *every* input token, not only of the masked ones.

One function, :func:`mask_tokens`, does this for both ways of training:

* static masking (the original BERT): masks are drawn once, when pretraining instances are created, and
  ``dupe_factor`` copies of the corpus get different masks;
* dynamic masking (RoBERTa, Liu et al., 2019, sec. 4.1): masks are drawn afresh every time a sequence is
  put into a batch, so every epoch sees new masks.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

# The paper's values (sec. 3.1 and appendix A.2) and the original code's defaults for max_seq_length=128.
DEFAULT_MASKED_LM_PROB = 0.15
DEFAULT_MAX_PREDICTIONS_PER_SEQ = 20  # round(0.15 * 128) = 19, plus headroom; the original used 20
MASK_PROB = 0.8  # of the chosen positions: become [MASK]
KEEP_PROB_OF_REST = 0.5  # of the remaining 20%: half keep their token, half get a random one

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """Everything :func:`mask_tokens` needs to know about the vocabulary and the masking recipe.

    Build it with :meth:`from_tokenizer` (or :meth:`from_vocab` when all you have is a ``vocab.txt``).

    * ``special_ids`` are never chosen for prediction ([CLS], [SEP], [PAD], and [UNK]: predicting [UNK]
      teaches nothing). The original code only skipped [CLS] and [SEP].
    * ``replacement_ids`` are the ids a "random token" is drawn from: every non-special id. The original
      drew from the whole vocabulary, so a random replacement could be [CLS] or [PAD]; we keep structural
      tokens where they belong.
    * ``continuation_ids`` are the ``##`` word pieces; with ``whole_word_mask`` a word's pieces are chosen
      together.
    """

    mask_token_id: int
    special_ids: frozenset
    replacement_ids: tuple
    continuation_ids: frozenset
    masked_lm_prob: float = DEFAULT_MASKED_LM_PROB
    max_predictions_per_seq: int = DEFAULT_MAX_PREDICTIONS_PER_SEQ
    whole_word_mask: bool = False

    def __post_init__(self):
        if not isinstance(self.masked_lm_prob, (int, float)) or not 0.0 < self.masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1] (BERT uses 0.15), got {self.masked_lm_prob!r}")
        if (not isinstance(self.max_predictions_per_seq, int) or isinstance(self.max_predictions_per_seq, bool)
                or self.max_predictions_per_seq < 1):
            raise ValueError(f"max_predictions_per_seq must be a positive integer (BERT uses 20 for 128 tokens), "
                             f"got {self.max_predictions_per_seq!r}")
        if not self.replacement_ids:
            raise ValueError("the vocabulary has no ordinary (non-special) tokens to draw random replacements from")

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], special_ids=None, **recipe) -> "MaskingSpec":
        """Build from the vocabulary as a list of tokens in id order (the lines of ``vocab.txt``).

        ``special_ids`` defaults to the ids of BERT's five special tokens present in the vocabulary.
        ``recipe`` is ``masked_lm_prob``, ``max_predictions_per_seq`` and ``whole_word_mask``.
        """
        index = {token: i for i, token in enumerate(tokens)}
        if "[MASK]" not in index:
            raise ValueError("the vocabulary has no [MASK] token, which masked-LM pretraining needs; "
                             "use a BERT vocab.txt (minibert's vocab trainer reserves [PAD] [UNK] [CLS] [SEP] [MASK])")
        if special_ids is None:
            special_ids = [index[t] for t in SPECIAL_TOKENS if t in index]
        special = frozenset(int(i) for i in special_ids) | {index["[MASK]"]}
        return cls(
            mask_token_id=index["[MASK]"],
            special_ids=special,
            replacement_ids=tuple(i for i in range(len(tokens)) if i not in special),
            continuation_ids=frozenset(i for i, t in enumerate(tokens) if t.startswith("##")),
            **recipe)

    @classmethod
    def from_tokenizer(cls, tokenizer, **recipe) -> "MaskingSpec":
        """Build from a tokenizer with a ``vocab`` dict (token -> id) and, optionally, ``all_special_ids``."""
        tokens = vocab_tokens(tokenizer)
        return cls.from_vocab(tokens, getattr(tokenizer, "all_special_ids", None), **recipe)


def vocab_tokens(tokenizer) -> list[str]:
    """The tokenizer's vocabulary as a list in id order; raises if ids are not exactly 0..V-1."""
    vocab = getattr(tokenizer, "vocab", None)
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{type(tokenizer).__name__} has no non-empty `vocab` dict (token -> id); "
                         "pass a minibert.tokenizer.BertTokenizer")
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("the vocabulary's ids must be exactly 0 .. len(vocab)-1, one token each")
    return tokens


def mask_tokens(token_ids: Sequence[int], masking: MaskingSpec, rng: random.Random):
    """Choose positions to predict and corrupt them; returns ``(masked_ids, positions, labels)``.

    ``token_ids`` is one sequence (``[CLS] A [SEP] B [SEP]`` as ids). ``positions`` are sorted indices into
    it, ``labels`` the original ids there, and ``masked_ids`` a copy of ``token_ids`` with those positions
    corrupted (80% [MASK], 10% random token, 10% unchanged). ``rng`` is a ``random.Random``: the same seed
    gives the same masks.

    How many: ``round(masked_lm_prob * n)`` where ``n`` counts the maskable (non-special) tokens, at least
    1 and at most ``max_predictions_per_seq``. (The original counted [CLS] and the two [SEP]s in ``n``
    as well, masking slightly more than 15% of the real tokens of short sequences.)

    Whole-word masking: a ``##`` piece belongs to the word that starts just before it, and a word is
    chosen or skipped as a unit. A word that would overshoot the budget is skipped and the next one tried,
    as in the original, so the budget is never exceeded. (Unlike the original, a ``##`` piece right after
    [SEP], left there by truncation, starts its own word instead of joining the last word of segment A.)
    """
    # Candidate "words": lists of positions that are chosen together. Without whole-word masking every
    # maskable token is its own word; with it, a ## piece joins the word of the token just before it.
    candidates = [i for i, token in enumerate(token_ids) if token not in masking.special_ids]
    if masking.whole_word_mask:
        words: list[list[int]] = []
        for i in candidates:
            if token_ids[i] in masking.continuation_ids and words and words[-1][-1] == i - 1:
                words[-1].append(i)
            else:
                words.append([i])
    else:
        words = [[i] for i in candidates]
    num_candidates = len(candidates)
    num_to_predict = min(masking.max_predictions_per_seq, max(1, round(num_candidates * masking.masked_lm_prob)))

    masked_ids = list(token_ids)
    positions: list[int] = []
    for j in range(len(words)):
        if len(positions) >= num_to_predict:
            break
        # Visit the words in a uniformly random order, drawn lazily: a Fisher-Yates shuffle stopped as soon
        # as the budget is full. The words visited are those the original's full shuffle would put first
        # (the same distribution), but a 128-token sequence needs ~20 draws instead of ~125.
        k = rng.randrange(j, len(words))
        words[j], words[k] = words[k], words[j]
        word = words[j]
        if len(positions) + len(word) > num_to_predict:
            continue  # this whole word does not fit the budget; a shorter one later may
        for i in word:
            # Each piece of a whole word gets its own 80/10/10 draw, as in the original.
            if rng.random() < MASK_PROB:
                masked_ids[i] = masking.mask_token_id
            elif rng.random() < KEEP_PROB_OF_REST:
                pass  # keep the token: the model must still predict it
            else:
                masked_ids[i] = masking.replacement_ids[rng.randrange(len(masking.replacement_ids))]
            positions.append(i)
    positions.sort()
    labels = [token_ids[i] for i in positions]
    return masked_ids, positions, labels
