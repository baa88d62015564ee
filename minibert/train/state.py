"""Training checkpoints: one directory per checkpoint, written atomically, resumable exactly.

A checkpoint directory holds what a user needs to *use* the model (``config.json``, ``model.safetensors``,
``vocab.txt``, ``tokenizer_config.json``: it loads in ``transformers`` unchanged) plus what the trainer
needs to *continue* (``trainer_state.pt``: optimizer and scheduler state, the step, the RNG states of
python/numpy/torch and where the data stream stands).

``trainer_state.pt`` is read back with ``torch.load(weights_only=True)``, which refuses to unpickle code,
so it may only contain tensors, numbers, strings, lists, tuples and dicts: RNG states are stored as
lists/tensors, never as generator objects.

Why directories need care: ``os.replace`` swaps a *file* atomically, but it cannot replace a non-empty
directory. So a checkpoint is written under ``OUT/.tmp-<random>``; only once it is complete is the old
``OUT/last`` moved aside (``OUT/.old-<random>``) and the new one renamed into place. A crash between the
two renames leaves no ``OUT/last`` but a complete ``.old-*`` directory, which :func:`find_checkpoint`
recovers. At no moment is a half-written checkpoint called ``last``.

Also here, the rules of an output folder: a fresh run never replaces an existing one unless told to
(:func:`check_new_run`, :func:`clear_run`), and ``--model PATH`` means one thing everywhere
(:func:`model_directory`).
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import tempfile

import numpy as np
import torch

TRAINER_STATE = "trainer_state.pt"
LAST, BEST = "last", "best"
# What a run leaves in its folder: an existing one is replaced only with --overwrite (first four) ...
RUN_MARKERS = (LAST, BEST, "metrics.jsonl", "summary.json")
# ... and --overwrite removes these (a run's outputs, never anything else the folder holds).
RUN_OUTPUTS = RUN_MARKERS + ("curves.png", "predictions.tsv", "predictions.json", "nbest_predictions.json")


def capture_rng_state() -> dict:
    """The global RNG states of python, numpy and torch (CPU and CUDA) in a ``weights_only``-safe form."""
    version, mt_words, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt_words), gauss],
        # ('MT19937', uint32[624] key, pos, has_gauss, cached_gaussian): the array becomes a tensor.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, mt_words, gauss = state["python"]
    random.setstate((version, tuple(mt_words), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str, write_model, trainer_state: dict, name: str = LAST) -> str:
    """Write a checkpoint to ``out_dir/name`` atomically and return its path.

    ``write_model(directory)`` writes the model files (config, weights, vocabulary) into a fresh
    directory; ``trainer_state`` is saved beside them as ``trainer_state.pt``.
    """
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=out_dir)
    try:
        write_model(tmp)
        with open(os.path.join(tmp, TRAINER_STATE), "wb") as f:
            torch.save(trainer_state, f)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(out_dir, name)
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=".old-", dir=out_dir)
            os.rmdir(old)  # we only wanted a unique name; rename needs it absent
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_pretraining(out_dir: str, backend, tokenizer, step: int, run: dict, keep_copy: bool = False) -> str:
    """Checkpoint a pretraining run at ``step`` to ``out_dir/last`` (and ``out_dir/step-N`` with ``keep_copy``).

    ``run`` is what stays fixed during the run (``total_steps``, ``scheduler``, ``data``, ``args``); the
    step's optimizer state, RNG state and data position are added here.
    """
    payload = {**run, "step": step, "optimizer": backend.optimizer_state(), "rng": capture_rng_state(),
               "data": {**run["data"], "next_step": step}}
    path = save_checkpoint(out_dir, lambda directory: backend.save_model(directory, tokenizer), payload)
    if keep_copy:
        copy_checkpoint(out_dir, path, f"step-{step}")
    return path


def copy_checkpoint(out_dir: str, source: str, name: str) -> str:
    """Copy the checkpoint directory ``source`` to ``out_dir/name`` (atomically, like a save)."""
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=out_dir)
    os.rmdir(tmp)
    shutil.copytree(source, tmp)
    final = os.path.join(out_dir, name)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def find_checkpoint(out_dir: str) -> str:
    """The directory ``--resume`` continues from: ``out_dir/last`` (or a complete ``.old-*`` left by a crash).

    Raises ``FileNotFoundError`` with what to do when there is nothing to resume.
    """
    last = os.path.join(out_dir, LAST)
    if os.path.isfile(os.path.join(last, TRAINER_STATE)):
        return last
    # A crash between the two renames of save_checkpoint: the previous checkpoint is complete under .old-*.
    orphans = [d for d in glob.glob(os.path.join(out_dir, ".old-*"))
               if os.path.isfile(os.path.join(d, TRAINER_STATE))]
    if orphans:
        recovered = max(orphans, key=os.path.getmtime)
        os.replace(recovered, last)
        return last
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--resume: there is no checkpoint to resume: the run folder {out_dir!r} does not "
                                f"exist. Pass --out with the folder of the run to continue, or start a fresh run "
                                f"without --resume.")
    raise FileNotFoundError(
        f"--resume: there is no checkpoint to resume in {out_dir!r} (expected {last}/{TRAINER_STATE}). "
        f"Start a fresh run without --resume, or point --out at the directory of an earlier run.")


def load_trainer_state(checkpoint_dir: str) -> dict:
    """Read ``trainer_state.pt`` without executing any pickled code."""
    path = os.path.join(checkpoint_dir, TRAINER_STATE)
    return torch.load(path, map_location="cpu", weights_only=True)


def check_same_run(saved: dict, now: dict) -> None:
    """Refuse to resume with settings that differ from the saved run's, listing every difference.

    Only settings both sides record are compared (a checkpoint written before a setting existed resumes).
    """
    diffs = [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in sorted(set(saved) & set(now))
             if saved[k] != now[k]]
    if diffs:
        raise ValueError("--resume: these settings differ from the run being resumed, so it could not "
                         "continue the same trajectory:\n  " + "\n  ".join(diffs)
                         + "\nRepeat the original command line with --resume (or start a fresh --out).")


def existing_run(out_dir: str) -> list[str]:
    """The run outputs (checkpoints, metrics, summary) already in ``out_dir``; empty for a new folder."""
    if not os.path.isdir(out_dir):
        return []
    names = set(os.listdir(out_dir))
    found = [n for n in RUN_MARKERS if n in names]
    return found + sorted(n for n in names if n.startswith("step-") or n.startswith(".old-"))


def check_new_run(out_dir: str, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder that holds one, unless ``--overwrite`` (then :func:`clear_run`)."""
    if os.path.isfile(out_dir):
        raise FileExistsError(f"--out {out_dir!r} is a file, not a folder")
    found = existing_run(out_dir)
    if found and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(found)}). Continue it with --resume (the same options "
            f"plus --resume), replace it with --overwrite, or choose another --out.")


def clear_run(out_dir: str) -> None:
    """Remove a previous run's outputs from ``out_dir`` (``--overwrite``), and nothing else."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        if name in RUN_OUTPUTS or name.startswith(("step-", ".old-", ".tmp-")):
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def model_directory(path: str) -> str:
    """The checkpoint ``--model PATH`` means, for every command that reads a model (fill-mask, finetune).

    ``PATH`` itself when it holds ``config.json`` (a checkpoint, e.g. ``runs/pretrain/last`` or an HF BERT
    folder); otherwise ``PATH`` is a run folder and means its ``best/`` checkpoint, else its ``last/``.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path!r} is not a directory; pass a run folder (e.g. runs/pretrain) "
                                f"or a checkpoint folder (e.g. runs/pretrain/last)")
    for candidate in (path, os.path.join(path, BEST), os.path.join(path, LAST)):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(f"--model {path!r} is not a BERT checkpoint: it holds no config.json, and no "
                            f"{BEST}/config.json or {LAST}/config.json. Pass a run folder of `minibert pretrain` "
                            f"or `minibert finetune`, a checkpoint folder, or an HF BERT folder")
