"""Pretraining instances: documents -> ``[CLS] A [SEP] B [SEP]`` pairs for next-sentence prediction.

This follows google-research/bert's ``create_pretraining_data.py`` (re-derived, not copied). For each
document, sentences are gathered into a chunk until the chunk reaches a target length; a random-length
prefix of the chunk becomes segment A; half the time B is the rest of the chunk (IsNext, label 0), half
the time B is text from a random other document (label 1). Masks are then drawn by
:func:`minibert.data.masking.mask_tokens`.

Streaming. The original reads the whole corpus into memory, draws the random B from any document, and
shuffles all instances at the end. Here documents are read ``documents_per_window`` at a time, and each
window gets exactly the original treatment: shuffle its documents, make ``dupe_factor`` passes over them,
draw random Bs from the *other documents of the window*, shuffle the window's instances. A corpus that
fits in one window is processed exactly as the original would; a larger one never has to fit in memory,
at the price of random Bs and the shuffle being local to a window.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Iterable, Iterator

from minibert.data.masking import (DEFAULT_MASKED_LM_PROB, DEFAULT_MAX_PREDICTIONS_PER_SEQ, MaskingSpec,
                                   mask_tokens)

DEFAULT_MAX_SEQ_LENGTH = 128  # the original's phase-1 length (90% of the paper's steps)
DEFAULT_SHORT_SEQ_PROB = 0.1  # original default: 10% of documents get a shorter target length
# The original used 10 copies of the corpus, each with different masks, for 40 epochs over a large corpus
# (each masking seen ~4 times). Our small runs train for a few epochs, so 5 copies give every sentence 5
# different maskings and NSP pairings at half the size; with dynamic masking, 1 copy is usually enough.
DEFAULT_DUPE_FACTOR = 5
DEFAULT_SEED = 12345  # the original's --random_seed
DEFAULT_DOCUMENTS_PER_WINDOW = 1000
NUM_SPECIAL_IN_PAIR = 3  # [CLS] A [SEP] B [SEP]


@dataclasses.dataclass
class TrainingInstance:
    """One pretraining example: ``[CLS] A [SEP] B [SEP]`` with its masks and NSP label.

    All tokens are vocabulary ids (the original kept strings and converted when writing files; ids let
    the same instance go straight to :func:`collate` and to shards).

    * ``tokens``: the sequence, ``len(tokens) <= max_seq_length``; masked positions already corrupted.
    * ``segment_ids``: 0 for [CLS] A [SEP], 1 for B [SEP] (the token_type_ids).
    * ``is_random_next``: True when B comes from another document (next_sentence_label 1).
    * ``masked_lm_positions``: sorted positions to predict; empty when masking is dynamic.
    * ``masked_lm_labels``: the original id at each of those positions.
    """

    tokens: list
    segment_ids: list
    is_random_next: bool
    masked_lm_positions: list
    masked_lm_labels: list

    @property
    def next_sentence_label(self) -> int:
        """0 = B really follows A (IsNext), 1 = B is from a random document (NotNext)."""
        return int(self.is_random_next)

    def original_tokens(self) -> list:
        """The sequence before masking: the labels put back at their positions."""
        tokens = list(self.tokens)
        for position, label in zip(self.masked_lm_positions, self.masked_lm_labels):
            tokens[position] = label
        return tokens


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> None:
    """Trim A and B in place until ``len(A) + len(B) <= max_num_tokens``.

    One token at a time is removed from the longer side (B on a tie), from its front or its back with
    equal probability. Why both ends: always cutting the end would teach the model that sentences are
    cut off only at the end; random ends add a little noise instead of a bias.
    """
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def instances_from_document(window: list, document_index: int, max_num_tokens: int, short_seq_prob: float,
                            masking: MaskingSpec | None, rng: random.Random,
                            cls_id: int, sep_id: int) -> list:
    """All instances made from ``window[document_index]`` (a list of sentences, each a list of ids).

    Random "NotNext" segments come from the other documents of ``window``. ``masking=None`` leaves the
    instances unmasked (dynamic masking). The sequence of ``rng`` calls is part of the contract: the same
    seed gives the same instances.
    """
    document = window[document_index]
    # We usually fill the whole sequence: padding is wasted compute. But fine-tuning inputs are often short,
    # so short_seq_prob of the time the *whole document* gets a shorter target (drawn once per document and
    # pass, as in the original). The target is soft: a chunk ends at the first sentence that reaches it,
    # and truncation below enforces the hard limit max_num_tokens.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    chunk: list = []  # whole sentences, never split: B must start at a real sentence boundary for NSP
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            # A is a random number of the chunk's first sentences (at least one, leaving one for B).
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]

            # A one-sentence chunk has nothing to continue with, so it always gets a random B (and the
            # coin is not tossed, as in the original).
            is_random_next = len(chunk) == 1 or rng.random() < 0.5
            if is_random_next:
                target_b_length = target_seq_length - len(tokens_a)
                # Uniform over the *other* documents (the original retried up to 10 times to avoid itself).
                other = rng.randrange(len(window) - 1)
                if other >= document_index:
                    other += 1
                random_document = window[other]
                tokens_b = []
                for sentence in random_document[rng.randrange(len(random_document)):]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target_b_length:
                        break
                # The chunk's sentences after A were not used: "put them back" by rewinding i, so they
                # start the next chunk instead of being wasted.
                i -= len(chunk) - a_end
            else:
                tokens_b = [t for sentence in chunk[a_end:] for t in sentence]

            truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            tokens = [cls_id, *tokens_a, sep_id, *tokens_b, sep_id]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            if masking is None:
                positions, labels = [], []
            else:
                tokens, positions, labels = mask_tokens(tokens, masking, rng)
            instances.append(TrainingInstance(tokens, segment_ids, is_random_next, positions, labels))
            chunk, chunk_length = [], 0
        i += 1
    return instances


def tokenize_documents(documents: Iterable, tokenizer) -> Iterator[list]:
    """Tokenize each document (a list of sentence strings) into a list of sentences of ids.

    Sentences that tokenize to nothing (blank lines, stray whitespace) are skipped, as in the original,
    and so is a document left with no tokens at all. A document given with no sentences is an error: it
    usually means the corpus reader split the text wrongly.
    """
    for d, document in enumerate(documents):
        if isinstance(document, (str, bytes)) or not isinstance(document, Sequence):
            raise TypeError(f"document {d} is a {type(document).__name__}; each document must be a list of "
                            "sentence strings (corpus readers yield list[str] per document)")
        if len(document) == 0:
            raise ValueError(f"document {d} has no sentences; a document is a non-empty list of sentences "
                             "(separate documents by blank lines in BERT-format text files)")
        sentences = []
        for sentence in document:
            if not isinstance(sentence, str):
                raise TypeError(f"document {d} holds a {type(sentence).__name__}; sentences must be str")
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(sentence))
            if ids:
                sentences.append(ids)
        if sentences:
            yield sentences


def _windows(documents: Iterator, size: int) -> Iterator[list]:
    """Group documents into lists of ``size``; the last group has 2..size+1 so no document is alone.

    Two documents are held back until the stream ends, so the final window never consists of one lone
    document with no "other document" to draw a random B from.
    """
    window = []
    for document in documents:
        window.append(document)
        if len(window) == size + 2:
            yield window[:size]
            window = window[size:]
    if window:
        yield window


def create_training_instances(documents: Iterable, tokenizer, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
                              dupe_factor: int = DEFAULT_DUPE_FACTOR,
                              short_seq_prob: float = DEFAULT_SHORT_SEQ_PROB,
                              masked_lm_prob: float = DEFAULT_MASKED_LM_PROB,
                              max_predictions_per_seq: int = DEFAULT_MAX_PREDICTIONS_PER_SEQ,
                              whole_word_mask: bool = False, dynamic_masking: bool = False,
                              seed: int = DEFAULT_SEED, *,
                              documents_per_window: int = DEFAULT_DOCUMENTS_PER_WINDOW,
                              max_position_embeddings: int = 512) -> Iterator[TrainingInstance]:
    """Stream :class:`TrainingInstance` s made from ``documents``.

    ``documents`` is any iterable of documents, each a list of sentence strings (e.g.
    ``minibert.data.corpus.builtin_documents()`` or ``minibert.data.corpus.read_documents(paths)``); it is read
    lazily, one window of ``documents_per_window`` documents at a time. ``tokenizer`` is a
    ``minibert.tokenizer.BertTokenizer`` (``tokenize``, ``convert_tokens_to_ids``, ``vocab``).

    * ``max_seq_length``: tokens per instance including [CLS] and two [SEP]; at most
      ``max_position_embeddings`` (pass your model's ``config.max_position_embeddings``).
    * ``dupe_factor``: passes over the corpus, each with new chunking, NSP pairs and masks.
    * ``short_seq_prob``: the fraction of (document, pass) pairs given a shorter random target length.
    * ``masked_lm_prob``, ``max_predictions_per_seq``, ``whole_word_mask``: see :func:`mask_tokens`.
    * ``dynamic_masking``: leave instances unmasked; mask them at batch time (``collate(..., masking=)``,
      as ``minibert pretrain --dynamic-masking`` does, in memory or from shards).
    * ``seed``: all randomness comes from one ``random.Random(seed)``, so a seed fixes the output.

    Arguments are checked here, eagerly; corpus problems (empty corpus, a document with no sentences)
    are raised when iteration reaches them.
    """
    if not isinstance(max_seq_length, int) or max_seq_length < NUM_SPECIAL_IN_PAIR + 2:
        raise ValueError(f"max_seq_length must be an integer >= 5 ([CLS] A [SEP] B [SEP] with at least one token "
                         f"in A and in B), got {max_seq_length!r}")
    if max_seq_length > max_position_embeddings:
        raise ValueError(f"max_seq_length={max_seq_length} exceeds the model's max_position_embeddings="
                         f"{max_position_embeddings}; the model has no position embedding beyond that. "
                         "Use a shorter max_seq_length or a model with more positions.")
    if not isinstance(dupe_factor, int) or dupe_factor < 1:
        raise ValueError(f"dupe_factor must be a positive integer, got {dupe_factor!r}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob!r}")
    if not isinstance(documents_per_window, int) or documents_per_window < 2:
        raise ValueError(f"documents_per_window must be an integer >= 2 (random NSP segments come from the "
                         f"other documents of a window), got {documents_per_window!r}")
    # Built even with dynamic masking: it validates the vocabulary and the masking arguments up front.
    masking = MaskingSpec.from_tokenizer(tokenizer, masked_lm_prob=masked_lm_prob,
                                         max_predictions_per_seq=max_predictions_per_seq,
                                         whole_word_mask=whole_word_mask)
    for token in ("[CLS]", "[SEP]"):
        if token not in tokenizer.vocab:
            raise ValueError(f"the vocabulary has no {token} token, which BERT's input format needs")
    if isinstance(documents, Sequence) and len(documents) == 0:
        raise ValueError("the corpus is empty: no documents were given")

    return _generate(documents, tokenizer, max_seq_length - NUM_SPECIAL_IN_PAIR, dupe_factor, short_seq_prob,
                     None if dynamic_masking else masking, random.Random(seed), documents_per_window)


def _generate(documents, tokenizer, max_num_tokens, dupe_factor, short_seq_prob, masking, rng,
              documents_per_window) -> Iterator[TrainingInstance]:
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    num_documents = 0
    for window in _windows(tokenize_documents(documents, tokenizer), documents_per_window):
        num_documents += len(window)
        if len(window) < 2:
            raise ValueError("the corpus has a single document; next-sentence prediction needs at least two "
                             "(its NotNext segments come from a different document)")
        rng.shuffle(window)
        instances = []
        for _ in range(dupe_factor):
            for document_index in range(len(window)):
                instances.extend(instances_from_document(window, document_index, max_num_tokens, short_seq_prob,
                                                         masking, rng, cls_id, sep_id))
        rng.shuffle(instances)
        yield from instances
    if num_documents == 0:
        raise ValueError("the corpus is empty: no document had any tokens")
