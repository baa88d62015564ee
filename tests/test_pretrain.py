"""``minibert pretrain``: the loop trains, checkpoints load everywhere, resume is exact, errors are clear.

Every run here is a tiny BERT (2 layers, 32 wide) on 40 documents of Python's language reference (part of
the built-in corpus) with a 300-token vocabulary, so each takes a few seconds on 2 CPU cores.
"""
import json
import os
import signal

import numpy as np
import pytest
import torch

from minibert.modeling import BertForPreTraining
from minibert.train import backends, budget, pretrain, pretrain_args, signals
from minibert.train import state as trainer_state
from minibert.train.data import StepBatches

TINY_MODEL = ["--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "64"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_args(tiny_data, out, steps, *extra):
    corpus_path, vocab_dir = tiny_data
    # BERT's masking rate (not the default's 40%): the rate the tiny shards below are written with
    return ["--corpus", corpus_path, "--vocab", vocab_dir, *TINY_MODEL, "--max-seq-length", "32",
            "--batch-size", "8", "--dupe-factor", "1", "--masked-lm-prob", "0.15", "--steps", str(steps),
            "--out", str(out), "--attn", "eager", "--gelu", "eager", "--quiet", "--seed", "3", *extra]


def read_rows(out, split="train"):
    with open(os.path.join(out, pretrain.METRICS_FILE), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def test_step_batches_partition_global_batch_across_ranks():
    """Ranks and micro-steps together cover each global batch once; every epoch is a permutation."""
    n, micro, accum, world = 37, 3, 2, 2
    make = [StepBatches(list(range(n)), micro_batch_size=micro, grad_accum=accum, rank=r, world_size=world,
                        seed=5, pad_id=0, max_seq_length=8, num_steps=100) for r in range(world)]
    g = micro * accum * world
    stream = np.concatenate([make[0].global_indices(s).reshape(-1) for s in range(2 * n // g + 1)])
    for epoch in range(2):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(make[0].global_indices(4), make[1].global_indices(4))  # ranks agree
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # a fresh order per epoch


def test_dynamic_masks_do_not_depend_on_world_size_or_micro_steps(tiny_data):
    """An instance's dynamic masks are a function of (seed, epoch, instance): 1 rank x 1 micro-batch of 8,
    2 ranks x 2 micro-steps of 2 and 4 ranks x 1 of 2 mask every sequence of a step identically."""
    from minibert import data
    from minibert.tokenizer import BertTokenizer
    tokenizer = BertTokenizer.from_pretrained(tiny_data[1])
    with open(tiny_data[0], encoding="utf-8") as f:
        documents = [d.split("\n") for d in f.read().strip().split("\n\n")]
    instances = list(data.create_training_instances(documents[:12], tokenizer, max_seq_length=32, dupe_factor=1,
                                                    dynamic_masking=True, seed=1))
    masking = data.MaskingSpec.from_tokenizer(tokenizer)

    def masked_rows(world, accum, micro, step):
        """instance index -> (input ids, labels) of every sequence in ``step``'s global batch."""
        rows = {}
        for rank in range(world):
            sb = StepBatches(instances, micro_batch_size=micro, grad_accum=accum, rank=rank, world_size=world,
                             seed=3, pad_id=0, max_seq_length=32, num_steps=100, masking=masking)
            for batch, idx in zip(sb[step], sb.global_indices(step)[:, rank]):
                for b, i in enumerate(idx):
                    rows[int(i)] = (batch["input_ids"][b][batch["attention_mask"][b] == 1].tolist(),
                                    batch["labels"][b][batch["attention_mask"][b] == 1].tolist())
        return rows

    n = len(instances)
    for step in (0, n // 8 + 1):  # the first epoch, and one that starts the next
        one = masked_rows(1, 1, 8, step)
        assert len(one) == 8 and any(label != -100 for _, labels in one.values() for label in labels)
        assert masked_rows(2, 2, 2, step) == one
        assert masked_rows(4, 1, 2, step) == one
    # The same instance in the next epoch gets new masks.
    sb = StepBatches(instances, micro_batch_size=n, grad_accum=1, rank=0, world_size=1, seed=3, pad_id=0,
                     max_seq_length=32, num_steps=2, masking=masking)
    (first,), (second,) = sb[0], sb[1]
    order0, order1 = sb.global_indices(0).reshape(-1), sb.global_indices(1).reshape(-1)
    first_labels = first["labels"][np.argsort(order0)]
    second_labels = second["labels"][np.argsort(order1)]
    assert (first_labels != second_labels).any()


def test_training_decreases_loss_and_checkpoint_loads_in_transformers(tiny_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "run"
    summary = pretrain.main(tiny_args(tiny_data, out, 40, "--lr", "3e-3", "--eval-every", "20"))
    losses = [r["loss"] for r in read_rows(out)]
    assert [r["step"] for r in read_rows(out)] == list(range(1, 41))
    assert np.all(np.isfinite(losses))
    # From ln(300) + ln(2) = 6.4 at init; a model that learned nothing would stay there. (The last ten
    # steps are averaged: one batch's NSP loss swings by a nat with so few sequences.)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.4
    mlm = [r["mlm_loss"] for r in read_rows(out)]
    assert np.mean(mlm[-10:]) < np.mean(mlm[:5]) - 0.4
    assert [r["step"] for r in read_rows(out, "eval")] == [20, 40]
    assert summary["eval_loss"] == read_rows(out, "eval")[-1]["loss"]
    assert 0 < summary["unigram_baseline_mlm_acc"] < 1
    assert os.path.getsize(out / pretrain.CURVES_FILE) > 0

    last = out / "last"
    state = torch.load(last / trainer_state.TRAINER_STATE, weights_only=True)
    assert state["step"] == 40 and state["total_steps"] == 40
    ours = BertForPreTraining.from_pretrained(str(last))
    theirs = transformers.BertForPreTraining.from_pretrained(str(last)).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, ours.config.vocab_size, (3, 17), generator=gen)
    types = (torch.arange(17) >= 9).long().expand(3, 17)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 12:] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types)
        b = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    keep = mask.bool()
    assert (a.prediction_logits[keep] - b.prediction_logits[keep]).abs().max() < 1e-4
    assert (a.seq_relationship_logits - b.seq_relationship_logits).abs().max() < 1e-4


def crash_at_step(monkeypatch, step, argv):
    """Pretrain with ``argv`` until the optimizer's ``step``-th call, which fails like a killed process."""
    real_step = backends.TorchBackend.optimizer_step
    calls = {"n": 0}

    def crash(self, lr):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, lr)

    monkeypatch.setattr(backends.TorchBackend, "optimizer_step", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(argv)
    monkeypatch.setattr(backends.TorchBackend, "optimizer_step", real_step)


def test_resume_continues_the_same_loss_trajectory(tiny_data, tmp_path, monkeypatch):
    """Interrupted at step 9 (checkpoint at 6), resumed: losses and weights equal an uninterrupted run.

    Dropout is on and masks are dynamic, so this also checks that both are reproduced from the step.
    """
    extra = ["--save-every", "6", "--eval-every", "0", "--dynamic-masking", "--lr", "3e-3"]
    full = tmp_path / "full"
    pretrain.main(tiny_args(tiny_data, full, 12, *extra))

    broken = tmp_path / "broken"
    crash_at_step(monkeypatch, 9, tiny_args(tiny_data, broken, 12, *extra))
    assert torch.load(broken / "last" / trainer_state.TRAINER_STATE, weights_only=True)["step"] == 6
    pretrain.main(tiny_args(tiny_data, broken, 12, *extra, "--resume"))

    a, b = read_rows(full), read_rows(broken)
    assert [r["step"] for r in b] == list(range(1, 13))  # steps 7-8 of the crashed run were replaced
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6, atol=0)
    wa = BertForPreTraining.from_pretrained(str(full / "last")).state_dict()
    wb = BertForPreTraining.from_pretrained(str(broken / "last")).state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_numpy_backend_matches_torch_backend(tiny_data, tmp_path):
    """Same loop, same init, float64, dropout off: the NumPy reference and torch agree step by step.

    ``--grad-accum 2`` also checks the NumPy backend's per-loss weighting of micro-batches against the
    torch backend's globally normalised loss. Both run the same float64 arithmetic in a different
    order: measured agreement is ~1e-16 in losses and ~1e-15 in weights; the bounds are 1e-12.
    """
    from minibert.config import BertConfig
    from minibert.tokenizer import BertTokenizer

    init = tmp_path / "init"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(str(init), tokenizer=BertTokenizer.from_pretrained(tiny_data[1]))
    exact = ["--init-from", str(init), "--dtype", "float64", "--dropout", "0", "--batch-size", "4",
             "--grad-accum", "2", "--eval-every", "0", "--lr", "3e-3"]
    runs = {}
    for backend in ("torch", "numpy"):
        runs[backend] = tmp_path / backend
        pretrain.main(tiny_args(tiny_data, runs[backend], 4, *exact, "--backend", backend))
    a, b = read_rows(runs["torch"]), read_rows(runs["numpy"])
    for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-12, atol=0)
    assert a[-1]["loss"] < a[0]["loss"]
    np.testing.assert_allclose(read_rows(runs["numpy"], "eval")[0]["loss"],
                               read_rows(runs["torch"], "eval")[0]["loss"], rtol=1e-12)
    wa = BertForPreTraining.from_pretrained(str(runs["torch"] / "last"), dtype=torch.float64).state_dict()
    wb = BertForPreTraining.from_pretrained(str(runs["numpy"] / "last"), dtype=torch.float64).state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-12


class FakeClock:
    """``budget.clock`` for tests: time moves only when the test says (slow, uneven steps as under load)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("schedule", ["linear", "wsd"])
def test_time_budget_schedule_is_a_function_of_the_time_spent(monkeypatch, schedule):
    """Warm-up over the first --warmup-ratio of the time, then linear decay reaching 0 when the time for
    steps runs out (the budget less the measured final evaluation + checkpoint + one step + finish):
    from the end of the warm-up (linear), or over the last --decay-ratio after holding the peak (wsd)."""
    clock = FakeClock()
    monkeypatch.setattr(budget, "clock", clock)
    plan = budget.TimeBudget(100.0, peak_lr=1.0, warmup_ratio=0.1, eval_every_s=60, save_every_s=60,
                             evaluates=True, schedule=schedule, decay_ratio=0.3)
    plan.start()
    assert plan.after_step(1) == {"eval": 1.0, "save": 1.0}  # never measured: right after the first step
    plan.measured("eval", 5.0)
    plan.measured("save", 3.0)
    plan.measured("step", 2.0)
    assert plan.after_step(2) == {"eval": 0.0, "save": 0.0}
    available = 100.0 - (5.0 + 3.0 + 2.0 + budget.FINISH_SECONDS)  # 89 s of stepping
    for t in (0.0, 4.45, 8.9, 20.0, 44.5, 62.3, 70.0, 80.0, 88.9):
        clock.now = t
        f = t / available
        expected = f / 0.1 if f < 0.1 else 1.0 - f if schedule == "linear" else min(1.0, (1.0 - f) / 0.3)
        decision = plan.before_step(0)
        assert decision["lr"] == pytest.approx(expected, abs=1e-12), t
        assert decision["finished"] == 0.0 and decision["progress"] == pytest.approx(f, abs=1e-12)
    clock.now = available
    assert plan.before_step(0) == {"finished": 1.0, "lr": 0.0, "progress": 1.0}

    # A slow step (load) brings the end forward at once; the rate never climbs back when it is forgotten.
    clock.now = 0.0
    plan = budget.TimeBudget(100.0, peak_lr=1.0, warmup_ratio=0.0, eval_every_s=60, save_every_s=60,
                             evaluates=False)
    plan.start()
    plan.measured("save", 3.0)
    plan.measured("step", 10.0)
    clock.now = 50.0
    low = plan.before_step(0)["lr"]
    assert low == pytest.approx(1.0 - 50.0 / (100.0 - 3.0 - 10.0 - budget.FINISH_SECONDS))
    for _ in range(budget.STEP_WINDOW):
        plan.measured("step", 1.0)
    assert plan.before_step(0)["lr"] == pytest.approx(low)  # same time, smaller reserve: not higher


def slow_uneven_machine(monkeypatch, clock, seed=0):
    """Make every step take 0.5-4 s of fake time (every fifth step 3x slower), an evaluation 5 s and a
    checkpoint 2 s. Returns the list of step durations."""
    gen = np.random.default_rng(seed)
    durations = []
    real_step, real_eval = backends.TorchBackend.optimizer_step, pretrain.evaluate
    real_save = trainer_state.save_pretraining

    def step(self, lr):
        seconds = float(gen.uniform(0.5, 4.0)) * (3.0 if len(durations) % 5 == 4 else 1.0)
        durations.append(seconds)
        clock.now += seconds
        return real_step(self, lr)

    def evaluate(*args, **kwargs):
        clock.now += 5.0
        return real_eval(*args, **kwargs)

    def save(*args, **kwargs):
        clock.now += 2.0
        return real_save(*args, **kwargs)

    monkeypatch.setattr(budget, "clock", clock)
    monkeypatch.setattr(backends.TorchBackend, "optimizer_step", step)
    monkeypatch.setattr(pretrain, "evaluate", evaluate)
    monkeypatch.setattr(trainer_state, "save_pretraining", save)
    return durations


def minutes_args(tiny_data, out, minutes, *extra):
    args = tiny_args(tiny_data, out, 1, *extra)
    args[args.index("--steps"):args.index("--steps") + 2] = ["--minutes", str(minutes)]
    return args


@pytest.mark.parametrize("schedule, decay_ratio", [("wsd", 0.5), ("linear", 1.0)])
def test_minutes_run_ends_on_time_with_the_rate_decayed_under_slow_uneven_steps(tiny_data, tmp_path, monkeypatch,
                                                                                schedule, decay_ratio):
    """A 1.5-minute budget on a machine whose steps take 0.5-12 s: the run ends within the budget (+ at
    most one step longer than any seen before it), the rate decays to ~0 at the last step, and the final
    evaluation and checkpoint are inside. Every step logs its lr and elapsed seconds."""
    clock = FakeClock()
    durations = slow_uneven_machine(monkeypatch, clock)
    out = tmp_path / "run"
    summary = pretrain.main(minutes_args(tiny_data, out, 1.5, "--lr", "1e-3", "--schedule", schedule,
                                         "--decay-ratio", str(decay_ratio)))
    rows, evals = read_rows(out), read_rows(out, "eval")
    assert len(rows) == summary["steps"] == len(durations) >= 10
    assert clock.now == pytest.approx(summary["seconds"])
    assert 90.0 - 15.0 <= clock.now <= 90.0 + max(durations), (clock.now, max(durations))
    assert evals[-1]["step"] == summary["steps"] and summary["eval_loss"] == evals[-1]["loss"]
    assert evals[0]["step"] == 1  # the early measurement of an evaluation
    elapsed = [r["elapsed"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[-1] < clock.now
    lrs = [r["lr"] for r in rows]
    peak = int(np.argmax(lrs))
    assert lrs[0] == 0.0 and lrs[:peak + 1] == sorted(lrs[:peak + 1])       # warm-up
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)                   # then decay ...
    # ... to zero at the end of the stepping time: the last step starts within one step (and a checkpoint
    # or evaluation that fell between) of it, so its rate is that share of the peak.
    # (wsd decays over the last decay_ratio of the time, so 1/decay_ratio times as steeply.)
    assert lrs[-1] <= 1e-3 * (max(durations) + 5.0 + 2.0) / (90.0 * decay_ratio)
    if schedule == "wsd":  # the peak is held between the warm-up and the decay
        assert sum(lr == pytest.approx(1e-3, rel=1e-12) for lr in lrs) >= 2
    assert "time budget" in summary["stopped"]
    saved = torch.load(out / "last" / trainer_state.TRAINER_STATE, weights_only=True)
    assert saved["finished"] and saved["budget"]["seconds"] == 90.0


def kill_at_step(monkeypatch, step, signum=signal.SIGINT):
    """Send this process ``signum`` during the optimizer's ``step``-th call (a real signal, as Ctrl-C)."""
    real_step = backends.TorchBackend.optimizer_step
    calls = {"n": 0}

    def step_and_kill(self, lr):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real_step(self, lr)

    monkeypatch.setattr(backends.TorchBackend, "optimizer_step", step_and_kill)
    return lambda: monkeypatch.setattr(backends.TorchBackend, "optimizer_step", real_step)


def test_sigint_saves_and_resume_continues_the_same_losses(tiny_data, tmp_path, monkeypatch):
    """Ctrl-C in step 7: the step finishes, OUT/last holds step 7, the message says how to resume, and
    the resumed run logs the per-step losses of a run that was never stopped."""
    extra = ["--save-every", "0", "--eval-every", "5", "--dynamic-masking", "--lr", "3e-3"]
    full = tmp_path / "full"
    pretrain.main(tiny_args(tiny_data, full, 12, *extra))

    stopped = tmp_path / "stopped"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's default, in a shell's background job
    restore = kill_at_step(monkeypatch, 7)
    with pytest.raises(signals.Interrupted) as e:
        pretrain.main(tiny_args(tiny_data, stopped, 12, *extra))
    restore()
    assert e.value.exit_status == 130
    assert str(e.value).startswith("stopped at step 7 of 12; resume with: minibert pretrain --corpus ")
    assert f" --out {stopped} " in str(e.value) and str(e.value).endswith(" --lr 3e-3 --resume")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert torch.load(stopped / "last" / trainer_state.TRAINER_STATE, weights_only=True)["step"] == 7

    pretrain.main(tiny_args(tiny_data, stopped, 12, *extra, "--resume"))
    a, b = read_rows(full), read_rows(stopped)
    assert [r["step"] for r in b] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6, atol=0)
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
    assert [r["step"] for r in read_rows(stopped, "eval")] == [5, 10, 12]


def test_ctrl_c_in_a_real_process_prints_one_line_and_exits_130(tiny_data, tmp_path):
    """`minibert pretrain` in a subprocess, SIGINT after a few steps: exit status 130, no traceback, one line
    naming the step and the command that resumes it, and a checkpoint at that step."""
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = ["pretrain", *tiny_args(tiny_data, out, 100000)]
    process = subprocess.Popen([sys.executable, "-m", "minibert", *argv], cwd=repo,
                               env={**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / pretrain.METRICS_FILE
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped at step "), stderr
    step = int(lines[0].split()[3])
    assert f" --out {out} " in lines[0] and lines[0].endswith(" --resume")
    assert " of 100000; resume with: minibert pretrain --corpus " in lines[0]
    assert torch.load(out / "last" / trainer_state.TRAINER_STATE, weights_only=True)["step"] == step
    assert [r["step"] for r in read_rows(out)] == list(range(1, step + 1))


def test_resuming_a_minutes_run_continues_with_the_budget_left(tiny_data, tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    slow_uneven_machine(monkeypatch, clock, seed=1)
    out = tmp_path / "run"
    restore = kill_at_step(monkeypatch, 12)
    with pytest.raises(signals.Interrupted, match=r"stopped at step 12 \(0\.\d\d of 1 min spent"):
        pretrain.main(minutes_args(tiny_data, out, 1, "--schedule", "linear"))  # linear: decays from the start
    restore()
    monkeypatch.undo()
    spent = read_rows(out)[-1]["elapsed"]
    clock.now = 1000.0  # a new process: its clock starts anywhere
    durations = slow_uneven_machine(monkeypatch, clock, seed=2)
    summary = pretrain.main(minutes_args(tiny_data, out, 1, "--schedule", "linear", "--resume"))
    assert f"resuming {out} at step 12: " in capsys.readouterr().out
    rows = read_rows(out)
    assert [r["step"] for r in rows] == list(range(1, summary["steps"] + 1)) and summary["steps"] > 12
    assert rows[12]["elapsed"] > spent  # the clock continues from the checkpoint's
    assert summary["seconds"] <= 60.0 + max(durations)
    assert rows[-1]["lr"] < 0.1 * pretrain_args.DEFAULT_LR


def test_schedules_of_a_steps_run(tiny_data, tmp_path):
    """--schedule wsd (the default): warm-up, the peak, a linear decay to 0 over the last --decay-ratio of the
    steps; linear: BERT's; noam: warm-up to --lr, then 1/sqrt(step); constant: --lr throughout."""
    lr = pretrain_args.DEFAULT_LR
    wsd = tmp_path / "wsd"
    pretrain.main(tiny_args(tiny_data, wsd, 10, "--eval-every", "0", "--warmup-steps", "2", "--decay-ratio", "0.4"))
    expected = [0.0, 0.5 * lr, lr, lr, lr, lr, lr, 0.75 * lr, 0.5 * lr, 0.25 * lr]  # 4 decay steps: 10 - s of 4
    np.testing.assert_allclose([r["lr"] for r in read_rows(wsd)], expected, rtol=1e-12, atol=0)
    linear = tmp_path / "linear"
    pretrain.main(tiny_args(tiny_data, linear, 10, "--eval-every", "0", "--warmup-steps", "2", "--schedule", "linear"))
    expected = [0.0, 0.5 * lr] + [lr * (1 - s / 10) for s in range(2, 10)]
    np.testing.assert_allclose([r["lr"] for r in read_rows(linear)], expected, rtol=1e-12, atol=0)
    for bad, message in ((["--decay-ratio", "0"], "--decay-ratio must be in"),
                         (["--warmup-steps", "7", "--decay-ratio", "0.4"], "exceed --steps 10")):
        with pytest.raises(ValueError, match=message):
            pretrain.main(tiny_args(tiny_data, tmp_path / "bad", 10, *bad))
    with pytest.raises(ValueError, match="sum must be at most 1"):
        pretrain.main(minutes_args(tiny_data, tmp_path / "bad", 1, "--warmup-ratio", "0.5", "--decay-ratio", "0.6"))
    noam = tmp_path / "noam"
    pretrain.main(tiny_args(tiny_data, noam, 8, "--eval-every", "0", "--schedule", "noam", "--warmup-steps", "4"))
    lrs = [r["lr"] for r in read_rows(noam)]
    expected = [lr * min((4 / (s + 1)) ** 0.5, (s + 1) / 4) for s in range(8)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert max(lrs) == pytest.approx(lr) and lrs[3] == pytest.approx(lr)
    const = tmp_path / "const"
    pretrain.main(tiny_args(tiny_data, const, 3, "--eval-every", "0", "--schedule", "constant"))
    assert [r["lr"] for r in read_rows(const)] == [lr] * 3
    with pytest.raises(ValueError, match="--schedule noam is for --steps runs"):
        pretrain.main(minutes_args(tiny_data, tmp_path / "x", 1, "--schedule", "noam"))


def test_an_existing_run_is_never_replaced_without_overwrite(tiny_data, tmp_path, capsys):
    from minibert import cli
    out = tmp_path / "run"
    pretrain.main(tiny_args(tiny_data, out, 2, "--eval-every", "0"))
    (out / "step-9").mkdir()  # a kept copy of the old run, and a file that is not the run's
    (out / "notes.txt").write_text("mine")
    before = (out / pretrain.METRICS_FILE).read_text()
    with pytest.raises(FileExistsError, match=r"already holds a run \(last, metrics.jsonl, summary.json, step-9\)"
                                              r".*--resume.*--overwrite"):
        pretrain.main(tiny_args(tiny_data, out, 3, "--eval-every", "0"))
    assert (out / pretrain.METRICS_FILE).read_text() == before
    assert cli.main(["pretrain", *tiny_args(tiny_data, out, 3, "--eval-every", "0")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    pretrain.main(tiny_args(tiny_data, out, 3, "--eval-every", "0", "--overwrite"))
    assert [r["step"] for r in read_rows(out)] == [1, 2, 3]
    assert not (out / "step-9").exists() and (out / "notes.txt").read_text() == "mine"


def test_resume_rules(tiny_data, tmp_path, capsys):
    """--resume needs an explicit, existing --out; it refuses changed settings (architecture included),
    listing them, and a run that already finished."""
    from minibert import cli
    out = tmp_path / "run"
    pretrain.main(tiny_args(tiny_data, out, 2, "--eval-every", "0"))
    argv = tiny_args(tiny_data, out, 2, "--eval-every", "0", "--resume")
    no_out = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
    with pytest.raises(ValueError, match="--resume needs --out"):
        pretrain.main(no_out)
    with pytest.raises(ValueError, match=r"(?s)hidden: checkpoint 32, now 48.*layers: checkpoint 2, now 3"):
        pretrain.main(argv + ["--layers", "3", "--hidden", "48"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "nowhere", 2, "--resume"))
    with pytest.raises(ValueError, match="already finished"):
        pretrain.main(argv)
    assert cli.main(["pretrain", *argv, "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_shards(tiny_data, tmp_path_factory):
    """The tiny corpus's instances (seed 3, as tiny_args) written as shards by `python -m minibert.data`."""
    from minibert.data.__main__ import main as write
    directory = tmp_path_factory.mktemp("shards") / "shards"
    write(["--corpus", tiny_data[0], "--vocab", tiny_data[1], "--max-seq-length", "32", "--dupe-factor", "1",
           "--seed", "3", "--show", "0", "--out", str(directory)])
    return str(directory)


def test_shards_train_and_resume_like_instances_in_memory(tiny_data, tiny_shards, tmp_path, monkeypatch):
    """`--shards DIR` gives the per-step losses of the same instances built in memory (all documents
    trained on: --held-out-every 0), and a crashed --shards run resumes onto the same trajectory."""
    exact = ["--dtype", "float64", "--held-out-every", "0", "--save-every", "3"]
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    pretrain.main(tiny_args(tiny_data, memory, 6, *exact))
    summary = pretrain.main(tiny_args(tiny_data, disk, 6, *exact, "--shards", tiny_shards))
    a, b = read_rows(memory), read_rows(disk)
    assert [r["loss"] for r in b] == [r["loss"] for r in a] and a[-1]["loss"] < a[0]["loss"]
    assert summary["eval_loss"] is None  # shards hold no documents to hold out

    broken = tmp_path / "broken"
    crash_at_step(monkeypatch, 5, tiny_args(tiny_data, broken, 6, *exact, "--shards", tiny_shards))
    pretrain.main(tiny_args(tiny_data, broken, 6, *exact, "--shards", tiny_shards, "--resume"))
    assert [r["step"] for r in read_rows(broken)] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in read_rows(broken)], [r["loss"] for r in a], rtol=1e-9)


def write_unmasked_shards(tiny_data, directory) -> str:
    """The instances `--dynamic-masking` builds from the tiny corpus in memory (seed 3), written as shards."""
    from minibert import data
    from minibert.tokenizer import BertTokenizer
    tokenizer = BertTokenizer.from_pretrained(tiny_data[1])
    documents = data.corpus.load_corpus(tiny_data[0])
    data.write_shards(data.create_training_instances(documents, tokenizer, max_seq_length=32, dupe_factor=1,
                                                     dynamic_masking=True, seed=3), directory, tokenizer)
    return str(directory)


def test_unmasked_shards_need_dynamic_masking(tiny_data, tmp_path):
    shards = write_unmasked_shards(tiny_data, tmp_path / "shards")
    with pytest.raises(ValueError, match="--dynamic-masking"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "run", 1, "--shards", shards))
    pretrain.main(tiny_args(tiny_data, tmp_path / "run", 1, "--shards", shards, "--dynamic-masking"))


def test_resume_refuses_changed_settings(tiny_data, tmp_path):
    out = tmp_path / "run"
    pretrain.main(tiny_args(tiny_data, out, 2, "--eval-every", "0"))
    with pytest.raises(ValueError, match="lr: checkpoint"):
        pretrain.main(tiny_args(tiny_data, out, 2, "--eval-every", "0", "--lr", "2e-3", "--resume"))


def test_clear_errors(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "a", 1) + ["--corpus", str(tmp_path / "missing.txt")])
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "b", 1, "--resume"))
    config = {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocab_size=1000 but the vocabulary has 300"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "c", 1, "--config", str(tmp_path / "config.json")))
    with pytest.raises(ValueError, match="--steps or --minutes"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "d", 1, "--minutes", "1"))


@pytest.mark.parametrize("dtype, scale, rtol", [(torch.float64, 1.0, 1e-13), (torch.float32, 1.0, 1e-5),
                                                (torch.float32, 1e20, 1e-5)])  # 1e20: squares overflow float32
def test_clip_and_step_matches_the_reference_global_norm_clip(dtype, scale, rtol):
    """The global norm (BLAS dot products, summed in float64) and the clipped gradients against the NumPy
    reference's float64 clip_by_global_norm; a norm whose squares overflow float32 is still found."""
    from minibert.reference.optim import clip_grad_norm
    from minibert.train.common import clip_and_step
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.LayerNorm(200)).to(dtype)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * scale
    grads = {n: p.grad.double().numpy().copy() for n, p in model.named_parameters()}
    want_grads, want_norm = clip_grad_norm(grads, 1.0)
    seen = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.step = lambda: seen.update({n: p.grad.double().numpy() for n, p in model.named_parameters()})
    norm = clip_and_step(model, optimizer, 0.0, 1.0)
    assert norm == pytest.approx(want_norm, rel=rtol) and want_norm > 1.0
    for n, g in seen.items():
        np.testing.assert_allclose(g, want_grads[n], rtol=rtol, atol=0)
    model[0].weight.grad = torch.full_like(model[0].weight, float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        clip_and_step(model, optimizer, 0.0, 1.0)


def test_checkpoint_swap_recovers_from_a_crash_between_renames(tmp_path):
    """A crash after moving OUT/last aside but before renaming the new one in: the old one is recovered."""
    write = lambda d: open(os.path.join(d, "weights"), "w").write("v1")  # noqa: E731
    trainer_state.save_checkpoint(str(tmp_path), write, {"step": 1})
    os.replace(tmp_path / "last", tmp_path / ".old-crashed")
    assert trainer_state.find_checkpoint(str(tmp_path)) == str(tmp_path / "last")
    assert trainer_state.load_trainer_state(str(tmp_path / "last"))["step"] == 1


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    import random
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = trainer_state.capture_rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    trainer_state.restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_stop_request_first_signal_asks_a_repeat_is_ignored_a_later_one_interrupts(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    with signals.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C again (torchrun forwards it): ignored
        assert stop.requested == "SIGINT"
        monkeypatch.setattr(signals, "REPEAT_SECONDS", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
    assert signals.Interrupted("x", "SIGTERM").exit_status == 143


def test_masked_lm_prob_sets_the_training_rate_and_the_held_out_set_keeps_bert_s(tiny_data):
    """--masked-lm-prob 0.4 masks ~40% of the training tokens (static and dynamic masks alike), while the
    held-out questions, and so the accuracies, stay at BERT's 15% whatever the training rate."""
    from minibert.config import BertConfig
    from minibert.tokenizer import BertTokenizer
    from minibert.train.data import prepare_data
    tokenizer = BertTokenizer.from_pretrained(tiny_data[1])
    config = BertConfig(vocab_size=len(tokenizer.vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)

    def rates(*extra):
        args = pretrain_args.build_parser().parse_args(tiny_args(tiny_data, "unused", 1, *extra))
        pretrain_args.check_args(args, 1)
        d = prepare_data(args, tokenizer, config)
        batches = StepBatches(d.instances, micro_batch_size=64, grad_accum=1, rank=0, world_size=1, seed=3,
                              pad_id=0, max_seq_length=32, num_steps=4, masking=d.masking)
        train = [b for s in range(4) for b in batches[s]]

        def rate(bs):  # masked tokens / maskable tokens (real tokens minus [CLS] and two [SEP])
            return (sum(int((b["labels"] != -100).sum()) for b in bs)
                    / sum(int(b["attention_mask"].sum()) - 3 * len(b["attention_mask"]) for b in bs))
        return rate(train), rate(d.eval_batches)

    train, held_out = rates()
    assert 0.13 < train < 0.17 and 0.13 < held_out < 0.17, (train, held_out)
    for extra in ([], ["--dynamic-masking"]):
        train, held_out_40 = rates("--masked-lm-prob", "0.4", *extra)
        assert 0.37 < train < 0.43, (extra, train)
        assert held_out_40 == held_out, extra
    assert pretrain_args.max_predictions_per_seq(pretrain_args.build_parser().parse_args(
        ["--masked-lm-prob", "0.4", "--max-seq-length", "128"])) == 52  # not BERT's cap of 20
    with pytest.raises(ValueError, match="--masked-lm-prob must be in"):
        pretrain.main(tiny_args(tiny_data, "unused", 1, "--masked-lm-prob", "0.9"))

    def default_rate(*argv):
        args = pretrain_args.build_parser().parse_args(list(argv))
        pretrain_args.check_args(args, 1)
        return args.masked_lm_prob
    # The default trains at the study's 40%; shards written with masks keep theirs (BERT's 15% by default),
    # and masks drawn from unmasked shards (--dynamic-masking) follow the default again.
    assert default_rate() == pretrain_args.DEFAULT_MASKED_LM_PROB_TRAIN == 0.4
    assert default_rate("--shards", "dir") == 0.15
    assert default_rate("--shards", "dir", "--dynamic-masking") == 0.4


def test_a_short_sequence_phase_switches_once_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    """--short-seq-length 16 --short-seq-ratio 0.5 over 8 steps: steps 0-3 on 16-token sequences, 4-7 on 32;
    the switch is recorded in the checkpoint, and runs resumed before or after it repeat the losses."""
    widths = {}
    real_getitem = StepBatches.__getitem__

    def spy(self, step):
        micro = real_getitem(self, step)
        widths[step] = max(b["input_ids"].shape[1] for b in micro)
        return micro

    monkeypatch.setattr(StepBatches, "__getitem__", spy)
    extra = ["--short-seq-length", "16", "--short-seq-ratio", "0.5", "--save-every", "2", "--eval-every", "0"]
    full = tmp_path / "full"
    pretrain.main(tiny_args(tiny_data, full, 8, *extra))
    assert all(widths[s] <= 16 for s in range(4)) and all(16 < widths[s] <= 32 for s in range(4, 8)), widths
    assert torch.load(full / "last" / trainer_state.TRAINER_STATE, weights_only=True)["long_phase_from"] == 4
    for crash in (3, 6):  # resumed from the checkpoint at step 2 (short phase) and at step 4 (long phase)
        broken = tmp_path / f"broken{crash}"
        crash_at_step(monkeypatch, crash, tiny_args(tiny_data, broken, 8, *extra))
        pretrain.main(tiny_args(tiny_data, broken, 8, *extra, "--resume"))
        np.testing.assert_allclose([r["loss"] for r in read_rows(broken)], [r["loss"] for r in read_rows(full)],
                                   rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="--short-seq-length must be at least 5 and below"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "bad", 2, "--short-seq-length", "32"))
    with pytest.raises(ValueError, match="--short-seq-ratio must be in"):
        pretrain.main(tiny_args(tiny_data, tmp_path / "bad", 2, "--short-seq-length", "16", "--short-seq-ratio", "1"))
