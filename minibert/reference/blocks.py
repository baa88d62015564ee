"""BERT's sub-modules in NumPy, composed from ``layers``: forward returns (output, cache), backward adds the
gradient of every parameter it used into a ``grads`` dict and returns the gradient of its input.

Parameters are looked up in one flat dict by their HF names (``params[prefix + ".query.weight"]``), so the
same dict loads from and saves to a HF checkpoint unchanged. Each block's dropout sites take an explicit
(seed, offset) pair; ``minibert.rng.dropout_site_offset`` decides which offsets a whole model uses.

Shapes: B batch, S sequence, E hidden, H heads, D = E / H, F intermediate, V vocabulary.
"""
from __future__ import annotations

import numpy as np

from minibert.reference import layers as L


def accumulate(grads: dict, name: str, g: np.ndarray) -> None:
    """grads[name] += g (creating it): a parameter used twice, like the tied word embeddings, sums both."""
    grads[name] = grads[name] + g if name in grads else g


# --- small wrappers: a Linear / LayerNorm found by name --------------------------------------------------
def dense_forward(params, name, x):
    """The Linear layer ``name`` (``name.weight`` [out, in], ``name.bias`` [out]) applied to x: [..., in]."""
    return L.linear_forward(x, params[name + ".weight"], params[name + ".bias"])


def dense_backward(dy, cache, name, grads):
    """Backward of dense_forward: accumulates ``name.weight``/``name.bias`` grads, returns dx."""
    dx, dw, db = L.linear_backward(dy, cache)
    accumulate(grads, name + ".weight", dw)
    accumulate(grads, name + ".bias", db)
    return dx


def layernorm_forward(params, name, x, eps):
    """The LayerNorm ``name`` (``name.weight`` = gamma, ``name.bias`` = beta) over the last dim of x."""
    return L.layernorm_forward(x, params[name + ".weight"], params[name + ".bias"], eps)


def layernorm_backward(dy, cache, name, grads):
    """Backward of layernorm_forward: accumulates gamma/beta grads, returns dx."""
    dx, dgamma, dbeta = L.layernorm_backward(dy, cache)
    accumulate(grads, name + ".weight", dgamma)
    accumulate(grads, name + ".bias", dbeta)
    return dx


# --- embeddings ----------------------------------------------------------------------------------------
def embeddings_forward(params, prefix, input_ids, token_type_ids, eps, dropout_p, seed, offset):
    """h = dropout(LayerNorm(word[input_ids] + position[0..S-1] + token_type[token_type_ids])).

    input_ids, token_type_ids: int [B, S] -> h: [B, S, E]. ``prefix`` is e.g. ``"bert.embeddings"``.
    """
    S = input_ids.shape[1]
    word, c_word = L.embedding_forward(input_ids, params[prefix + ".word_embeddings.weight"])
    pos, c_pos = L.embedding_forward(np.arange(S)[None, :], params[prefix + ".position_embeddings.weight"])
    typ, c_typ = L.embedding_forward(token_type_ids, params[prefix + ".token_type_embeddings.weight"])
    normed, c_ln = layernorm_forward(params, prefix + ".LayerNorm", word + pos + typ, eps)
    h, c_drop = L.dropout_forward(normed, dropout_p, seed, offset)
    return h, (prefix, c_word, c_pos, c_typ, c_ln, c_drop)


def embeddings_backward(dh, cache, grads):
    """With ds = LayerNorm'(dropout'(dh)), the gradient of the sum, flowing unchanged to all three tables:
    dword[v] = sum of ds over positions whose id is v; dposition[s] = sum over the batch of ds[:, s];
    dtoken_type[t] = sum of ds over positions of type t. The integer ids get no gradient."""
    prefix, c_word, c_pos, c_typ, c_ln, c_drop = cache
    dsum = layernorm_backward(L.dropout_backward(dh, c_drop), c_ln, prefix + ".LayerNorm", grads)
    accumulate(grads, prefix + ".word_embeddings.weight", L.embedding_backward(dsum, c_word))
    accumulate(grads, prefix + ".position_embeddings.weight",
               L.embedding_backward(dsum.sum(axis=0, keepdims=True), c_pos))
    accumulate(grads, prefix + ".token_type_embeddings.weight", L.embedding_backward(dsum, c_typ))


# --- multi-head self-attention + its output sub-layer ----------------------------------------------------
def _split_heads(x, H):
    """[B, S, E] -> [B, H, S, D]."""
    B, S, E = x.shape
    return x.reshape(B, S, H, E // H).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """[B, H, S, D] -> [B, S, E]."""
    B, H, S, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, H * D)


def self_attention_forward(params, prefix, x, attention_mask, num_heads, eps, attn_dropout_p,
                           hidden_dropout_p, seed, attn_offset, hidden_offset):
    """BertAttention: y = LayerNorm(x + dropout(dense(MultiHead(x)))) (post-LN residual).

    MultiHead(x) = concat_h attention(x Wq_h, x Wk_h, x Wv_h) with a key-padding mask. x: [B, S, E].
    ``prefix`` is e.g. ``"bert.encoder.layer.0.attention"``.
    """
    q, c_q = dense_forward(params, prefix + ".self.query", x)  # [B, S, E]
    k, c_k = dense_forward(params, prefix + ".self.key", x)
    v, c_v = dense_forward(params, prefix + ".self.value", x)
    ctx, c_att = L.attention_forward(_split_heads(q, num_heads), _split_heads(k, num_heads),
                                     _split_heads(v, num_heads), attention_mask, None, attn_dropout_p,
                                     seed, attn_offset)  # [B, H, S, D]
    out, c_out = dense_forward(params, prefix + ".output.dense", _merge_heads(ctx))
    out, c_drop = L.dropout_forward(out, hidden_dropout_p, seed, hidden_offset)
    y, c_ln = layernorm_forward(params, prefix + ".output.LayerNorm", x + out, eps)
    return y, (prefix, num_heads, c_q, c_k, c_v, c_att, c_out, c_drop, c_ln)


def self_attention_backward(dy, cache, grads):
    """With y = LN(x + o): dr = LN'(dy) (the gradient of x + o); do = dropout'(dr); dctx = do W_o;
    (dq, dk, dv) = attention'(dctx); dx = dr + dq W_q + dk W_k + dv W_v (q, k and v all read x)."""
    prefix, H, c_q, c_k, c_v, c_att, c_out, c_drop, c_ln = cache
    dres = layernorm_backward(dy, c_ln, prefix + ".output.LayerNorm", grads)  # d(x + out)
    dout = L.dropout_backward(dres, c_drop)
    dctx = dense_backward(dout, c_out, prefix + ".output.dense", grads)
    dq, dk, dv = L.attention_backward(_split_heads(dctx, H), c_att)
    dx = dres
    dx = dx + dense_backward(_merge_heads(dq), c_q, prefix + ".self.query", grads)
    dx = dx + dense_backward(_merge_heads(dk), c_k, prefix + ".self.key", grads)
    dx = dx + dense_backward(_merge_heads(dv), c_v, prefix + ".self.value", grads)
    return dx


# --- feed-forward + its output sub-layer ---------------------------------------------------------------
def feed_forward_forward(params, prefix, x, approximate, eps, dropout_p, seed, offset):
    """BertIntermediate + BertOutput: y = LayerNorm(x + dropout(dense_out(GELU(x W1^T + b1)))).

    The first dense's bias is added inside bias+GELU, the op the fused kernel computes. x: [B, S, E],
    intermediate: [B, S, F]. ``prefix`` is e.g. ``"bert.encoder.layer.0"``.
    """
    w1 = params[prefix + ".intermediate.dense.weight"]  # [F, E]
    pre = (x.reshape(-1, x.shape[-1]) @ w1.T).reshape(*x.shape[:-1], w1.shape[0])  # [B, S, F], 2-D matmul
    a, c_gelu = L.bias_gelu_forward(pre, params[prefix + ".intermediate.dense.bias"], approximate)
    out, c_out = dense_forward(params, prefix + ".output.dense", a)
    out, c_drop = L.dropout_forward(out, dropout_p, seed, offset)
    y, c_ln = layernorm_forward(params, prefix + ".output.LayerNorm", x + out, eps)
    return y, (prefix, x, w1, c_gelu, c_out, c_drop, c_ln)


def feed_forward_backward(dy, cache, grads):
    """With y = LN(x + dropout(GELU(pre) W2^T + b2)), pre = x W1^T: dr = LN'(dy); da = dropout'(dr) W2;
    dpre = GELU'(pre + b1) * da; dW1 = dpre^T x; db1 = sum of dpre over rows; dx = dr + dpre W1."""
    prefix, x, w1, c_gelu, c_out, c_drop, c_ln = cache
    dres = layernorm_backward(dy, c_ln, prefix + ".output.LayerNorm", grads)
    da = dense_backward(L.dropout_backward(dres, c_drop), c_out, prefix + ".output.dense", grads)
    dpre, db1 = L.bias_gelu_backward(da, c_gelu)  # dpre: [B, S, F]
    dpre2, x2 = dpre.reshape(-1, dpre.shape[-1]), x.reshape(-1, x.shape[-1])  # [N, F], [N, E]
    accumulate(grads, prefix + ".intermediate.dense.weight", dpre2.T @ x2)
    accumulate(grads, prefix + ".intermediate.dense.bias", db1)
    return dres + (dpre2 @ w1).reshape(x.shape)


# --- one encoder layer ---------------------------------------------------------------------------------
def encoder_layer_forward(params, prefix, x, attention_mask, config, dropout_on, seed, offsets):
    """BertLayer (post-LN): self-attention sub-layer, then feed-forward sub-layer. x: [B, S, E].

    ``offsets`` = (attention probs, attention output, FFN output) dropout offsets under ``seed``;
    ``dropout_on=False`` (inference) turns every dropout off.
    """
    p_attn = config.attention_probs_dropout_prob if dropout_on else 0.0
    p_hidden = config.hidden_dropout_prob if dropout_on else 0.0
    h, c_att = self_attention_forward(params, prefix + ".attention", x, attention_mask,
                                      config.num_attention_heads, config.layer_norm_eps, p_attn, p_hidden,
                                      seed, offsets[0], offsets[1])
    y, c_ffn = feed_forward_forward(params, prefix, h, config.gelu_approximate, config.layer_norm_eps,
                                    p_hidden, seed, offsets[2])
    return y, (c_att, c_ffn)


def encoder_layer_backward(dy, cache, grads):
    """Backward of encoder_layer_forward: the two sub-layers in reverse order."""
    c_att, c_ffn = cache
    return self_attention_backward(feed_forward_backward(dy, c_ffn, grads), c_att, grads)


# --- pooler and pretraining heads ----------------------------------------------------------------------
def pooler_forward(params, prefix, h):
    """pooled = tanh(dense(h[:, 0])): the [CLS] position's vector. h: [B, S, E] -> pooled: [B, E]."""
    z, c_dense = dense_forward(params, prefix + ".dense", h[:, 0])
    pooled = np.tanh(z)
    return pooled, (prefix, h.shape, c_dense, pooled)


def pooler_backward(dpooled, cache, grads):
    """tanh'(z) = 1 - tanh(z)^2; only position 0 of h receives gradient."""
    prefix, h_shape, c_dense, pooled = cache
    dcls = dense_backward(dpooled * (1.0 - pooled * pooled), c_dense, prefix + ".dense", grads)
    dh = np.zeros(h_shape, dtype=dcls.dtype)
    dh[:, 0] = dcls
    return dh


def mlm_head_forward(params, word_embeddings_name, h, approximate, eps):
    """BertLMPredictionHead: logits = LayerNorm(GELU(dense(h))) W_emb^T + b.

    The decoder weight is the word-embedding table itself (tied, [V, E]), named ``word_embeddings_name``;
    its own bias is ``cls.predictions.bias`` [V]. h: [B, S, E] -> logits: [B, S, V].
    """
    t, c_dense = dense_forward(params, "cls.predictions.transform.dense", h)
    t, c_gelu = L.gelu_forward(t, approximate)
    t, c_ln = layernorm_forward(params, "cls.predictions.transform.LayerNorm", t, eps)
    logits, c_dec = L.linear_forward(t, params[word_embeddings_name], params["cls.predictions.bias"])
    return logits, (word_embeddings_name, c_dense, c_gelu, c_ln, c_dec)


def mlm_head_backward(dlogits, cache, grads):
    """logits = t W_emb^T + b: dW_emb += dlogits^T t (*added* to the embedding lookup's gradient, since
    the weight is shared), db = sum of dlogits over rows, dt = dlogits W_emb; then back through
    LayerNorm, GELU and the transform dense. Returns dh."""
    word_embeddings_name, c_dense, c_gelu, c_ln, c_dec = cache
    dt, dw, db = L.linear_backward(dlogits, c_dec)
    accumulate(grads, word_embeddings_name, dw)
    accumulate(grads, "cls.predictions.bias", db)
    dt = layernorm_backward(dt, c_ln, "cls.predictions.transform.LayerNorm", grads)
    dt = L.gelu_backward(dt, c_gelu)
    return dense_backward(dt, c_dense, "cls.predictions.transform.dense", grads)


def nsp_head_forward(params, pooled):
    """BertOnlyNSPHead: logits = dense(pooled), [B, E] -> [B, 2] (0 = IsNext, 1 = NotNext)."""
    return dense_forward(params, "cls.seq_relationship", pooled)


def nsp_head_backward(dlogits, cache, grads):
    """Backward of nsp_head_forward; returns dpooled."""
    return dense_backward(dlogits, cache, "cls.seq_relationship", grads)
