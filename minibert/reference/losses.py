"""The pretraining losses in NumPy: a stable log-softmax and cross-entropy, with their gradients.

BERT's loss is the sum of two cross-entropies (Devlin et al., 2018, appendix A.2):
* masked LM: over the positions whose label is not ``IGNORE_INDEX`` (-100), averaged over those positions;
* next sentence prediction: over the batch, label 0 = IsNext, 1 = NotNext (random sentence).
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # label of a position the MLM does not predict (PyTorch's / HF's convention)


def log_softmax(x, axis: int = -1):
    """log p = x - logsumexp(x) with logsumexp(x) = m + log sum exp(x - m), m = max x.

    Subtracting the max first keeps exp() from overflowing; the largest term is exp(0) = 1, so the log never
    sees 0 either.
    """
    m = x.max(axis=axis, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))


def cross_entropy_forward(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean of -log softmax(logits)[label] over the rows whose label is not ``ignore_index``.

    logits: [..., C], labels: int [...] -> scalar loss (same dtype as logits). When every label is
    ``ignore_index`` there is nothing to predict: the loss is 0 and its gradient is 0.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {labels.shape} must equal logits shape without the class dim "
                         f"{logits.shape[:-1]}")
    C = logits.shape[-1]
    flat_logits = logits.reshape(-1, C)  # [N, C]
    flat_labels = labels.reshape(-1)  # [N]
    predicted = flat_labels != ignore_index
    bad = predicted & ((flat_labels < 0) | (flat_labels >= C))
    if bad.any():
        raise ValueError(f"labels must be in [0, {C}) or {ignore_index} (ignored); "
                         f"got {flat_labels[bad][:5].tolist()}")
    count = int(predicted.sum())
    logp = log_softmax(flat_logits[predicted])  # [count, C]
    rows = np.arange(count)
    loss = -logp[rows, flat_labels[predicted]].sum() / max(count, 1)
    return logits.dtype.type(loss), (logits.shape, predicted, flat_labels[predicted], logp, count)


def cross_entropy_backward(dloss, cache):
    """d loss / d logits = (softmax(logits) - onehot(label)) / count on predicted rows, 0 elsewhere."""
    shape, predicted, labels, logp, count = cache
    dflat = np.zeros((predicted.size, shape[-1]), dtype=logp.dtype)
    if count:
        g = np.exp(logp)
        g[np.arange(count), labels] -= 1.0
        dflat[predicted] = g * (dloss / count)
    return dflat.reshape(shape)
