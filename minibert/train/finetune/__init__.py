"""Fine-tuning a pretrained BERT (Devlin et al., 2018, section 4), one module per part.

* ``loop``: the training loop both tasks share (AdamW, warm-up + linear decay, clipping, epochs, evaluation,
  ``best``/``last`` checkpoints, ``--resume``);
* ``classify``: ``minibert finetune classify``, sentence (pair) classification and regression from TSV, CSV
  or JSONL files, or a built-in task made from the built-in corpus;
* ``qa``: ``minibert finetune squad``, SQuAD v1.1 / v2.0 extractive question answering;
* ``squad``: reading SQuAD JSON, windowed features, answer post-processing and the official EM/F1.

The models themselves (``BertForSequenceClassification``, ``BertForQuestionAnswering``) live in
``minibert.modeling`` beside the encoder; their NumPy twins are in ``minibert.reference.heads``.
"""
