"""The readable NumPy BERT: every layer a forward plus a hand-written backward.

* ``layers``: Linear, Embedding, LayerNorm, GELU, bias+GELU, softmax, dropout, scaled dot-product attention;
* ``blocks``: BERT's sub-modules built from them (embeddings, self-attention, feed-forward, encoder layer,
  pooler, MLM and NSP heads), parameters looked up by HF names;
* ``model``: ``BertModel`` and ``BertForPreTraining`` (forward, backward, from/save_pretrained);
* ``heads``: the fine-tuning models ``BertForSequenceClassification`` and ``BertForQuestionAnswering``;
* ``losses``, ``optim``, ``schedules``, ``train``: the pretraining step and loop;
* ``gradcheck``: the central-difference checker every backward is tested with.
"""
from minibert.reference.heads import BertForQuestionAnswering, BertForSequenceClassification
from minibert.reference.model import BertForPreTraining, BertModel
from minibert.rng import dropout_site_offset

__all__ = ["BertForPreTraining", "BertForQuestionAnswering", "BertForSequenceClassification", "BertModel",
           "dropout_site_offset"]
