"""Training: ``minibert pretrain`` and ``minibert finetune``, one module per concern.

* ``pretrain``: the pretraining loop, readable top to bottom (options in ``pretrain_args``);
* ``data``: the pretraining data path: instances in memory or shards on disk, step ``s``'s batches;
* ``backends``: one optimizer step of MLM + NSP for the torch model and for the NumPy reference;
* ``common``: what pretraining and fine-tuning share: AdamW and its parameter groups, clip-and-step,
  seeds, the device, the metrics log;
* ``state``: checkpoints with optimizer, schedule and RNG state, the checks ``--resume`` makes, the rules of
  an output folder (``--overwrite``) and what ``--model PATH`` means;
* ``budget``: the run's clock: the learning rate, evaluations, checkpoints and the end of a ``--steps`` or
  ``--minutes`` run; ``signals``: Ctrl-C / SIGTERM stop a run cleanly; ``report``: progress, curves and the
  summary;
* ``finetune``: ``minibert finetune classify | squad`` on top of the same pieces.
"""
