"""Data parallel pretraining: two gloo processes under torchrun match one process on the same global batch.

One process trains with ``--batch-size 8``; two processes train with ``--batch-size 2 --grad-accum 2``
each, so the global batch (2 x 2 ranks x 2 micro-steps = 8) holds the same eight sequences every step.
Because the loss is normalised by the global batch (``minibert.train.backends``), the gradients are
the same sums in a different order: in float64 with dropout off, losses and final weights agree to
rounding (1e-10).

Masks are dynamic (``--dynamic-masking``): each sequence gets fresh masks every time it is batched, from
an RNG seeded with (seed, epoch, instance) alone, so the two ranks, each building its own micro-batches,
mask every sequence exactly as the single process does. (Static masks are fixed per instance, so the
same check with them would only repeat the data partition this one already covers.)
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from minibert.train import pretrain
from minibert.modeling import BertForPreTraining

from test_pretrain import read_rows, tiny_args, write_unmasked_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXACT = ["--dtype", "float64", "--dropout", "0", "--eval-every", "0", "--save-every", "0", "--dynamic-masking"]


def torchrun(args):
    """``python -m minibert.train.pretrain ARGS`` in two gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "minibert.train.pretrain", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_dynamic_masking(tiny_data, tmp_path):
    single = tmp_path / "single"
    pretrain.main(tiny_args(tiny_data, single, 4, *EXACT))

    ddp = tmp_path / "ddp"
    torchrun(tiny_args(tiny_data, ddp, 4, *EXACT, "--batch-size", "2", "--grad-accum", "2"))

    with open(ddp / pretrain.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 8
    a, b = read_rows(single), read_rows(ddp)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "mlm_acc", "nsp_acc"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-10, atol=0)
    # Held-out evaluation is split over the ranks and summed: same numbers as one process.
    np.testing.assert_allclose(read_rows(ddp, "eval")[-1]["loss"], read_rows(single, "eval")[-1]["loss"],
                               rtol=1e-10)
    wa = BertForPreTraining.from_pretrained(str(single / "last"), dtype=torch.float64).state_dict()
    wb = BertForPreTraining.from_pretrained(str(ddp / "last"), dtype=torch.float64).state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-10
    # Training did happen (equal losses of two runs that never moved would prove nothing).
    assert a[-1]["loss"] < a[0]["loss"]


@pytest.mark.slow
def test_two_gloo_processes_on_shards_match_one_process_in_memory(tiny_data, tmp_path):
    """`--shards DIR` under torchrun: each rank reads its part of every step from disk, masks it
    dynamically, and the run equals one process holding the same instances in memory."""
    exact = [*EXACT, "--held-out-every", "0"]
    single = tmp_path / "single"
    pretrain.main(tiny_args(tiny_data, single, 4, *exact))
    shards = write_unmasked_shards(tiny_data, tmp_path / "shards")
    ddp = tmp_path / "ddp"
    torchrun(tiny_args(tiny_data, ddp, 4, *exact, "--batch-size", "2", "--grad-accum", "2", "--shards", shards))
    a, b = read_rows(single), read_rows(ddp)
    assert [r["step"] for r in b] == [1, 2, 3, 4] and a[-1]["loss"] < a[0]["loss"]
    for key in ("loss", "mlm_acc", "nsp_acc"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-10, atol=0)
