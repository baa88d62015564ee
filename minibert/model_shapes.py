"""``python -m minibert.modeling`` shows its work: a tiny random BERT, each layer's output shape in the
order the forward pass runs them, then the model's outputs and its untrained loss.

Shapes: B batch, S sequence, E hidden size, H heads, F intermediate size, V vocabulary.
"""
import numpy as np
import torch

from minibert import ops
from minibert.config import BertConfig


def show_layer_shapes(model_cls) -> None:
    """``python -m minibert.modeling``: run a tiny random BERT and print each layer's output shape, in the
    order the forward pass runs them, then the model's outputs and loss. ``model_cls`` is
    ``minibert.modeling.BertForPreTraining`` (passed in, so that this module does not import the one
    that runs it)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    model = model_cls(config, attn_implementation="fused", gelu_implementation="fused").eval()
    input_ids = torch.randint(1, config.vocab_size, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0  # the second sequence is 5 tokens + 3 padding
    info = ops.backend_info()
    print(f"a random BERT: {config.num_hidden_layers} layers, E={config.hidden_size}, "
          f"H={config.num_attention_heads}, F={config.intermediate_size}, V={config.vocab_size}; "
          f"attention={model.attn_implementation}, gelu={model.gelu_implementation} "
          f"(extension: {info['how']}; `python -m minibert.ops` says why)")
    print(f"input_ids {tuple(input_ids.shape)} = [B, S], the second sequence padded after 5 tokens\n")

    # Each module's output shape, recorded by forward hooks as the forward pass runs.
    shown = []

    def record(name):
        def hook(module, inputs, output):
            tensor = output[0] if isinstance(output, tuple) else output
            if isinstance(tensor, torch.Tensor):
                shown.append((name, type(module).__name__, tuple(tensor.shape)))
        return hook

    layers = [f"bert.encoder.layer.{i}{part}" for i in range(config.num_hidden_layers)
              for part in (".attention.self", ".attention", ".intermediate", ".output", "")]
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(record(name)) for name in
               ["bert.embeddings", *layers, "bert.pooler", "cls.predictions", "cls.seq_relationship"]]
    with torch.no_grad():
        out = model(input_ids, attention_mask, labels=torch.where(torch.rand(2, 8) < 0.3, input_ids, -100),
                    next_sentence_label=torch.tensor([0, 1]))
    for handle in handles:
        handle.remove()
    width = max(len(n) for n, _, _ in shown)
    print(f"{'layer':<{width}}  {'module':<28} output shape")
    for name, kind, shape in shown:
        print(f"{name:<{width}}  {kind:<28} {shape}")
    print()
    for name in ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits"):
        print(f"{name:<23}", tuple(getattr(out, name).shape))
    print(f"loss = mlm {out.mlm_loss.item():.4f} + nsp {out.nsp_loss.item():.4f} = {out.loss.item():.4f} "
          f"(untrained: about ln(V) = {np.log(config.vocab_size):.2f} + ln 2 = {np.log(2):.2f})")
