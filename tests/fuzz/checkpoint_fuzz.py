"""Fuzzing the loaders: crafted checkpoint folders through every way minibert reads one.

A small valid checkpoint (``config.json``, ``model.safetensors``, ``vocab.txt``) is copied and broken in
one way per case: config values out of range, of the wrong type, NaN, absurd sizes that would allocate
terabytes, inconsistent with the weights; weights with NaN, other dtypes, wrong shapes, missing or extra
tensors, corrupt safetensors files, pickles that run code, sharded indexes that point outside the folder;
vocabularies that are missing, empty or of the wrong size. Some cases are valid in disguise (bf16 or fp16
weights, HF's extra config fields, a byte-order mark, old gamma/beta names, missing pretraining heads)
and must load. Each case goes through each loader, in worker subprocesses with a memory cap and a time
limit, and each outcome is one of:

* ``loaded``: a valid case loaded, and the loaded model gives finite outputs;
* ``clear_error``: a broken case refused with ``ValueError``/``OSError`` (or exit status 2 from the CLI)
  whose message names the field at fault where there is one;
* ``traceback``: any other exception, or exit status 1 from the CLI;
* ``accepted_invalid``: a broken case loaded (NaN outputs, a file outside the folder read ...);
* ``refused_valid``: a valid case refused;
* ``code_execution``: a pickle's payload ran;
* ``timeout`` / ``crash``: the loader ran past its time limit, or the worker died (memory cap, signal).

Only ``loaded`` and ``clear_error`` pass. ``python tests/fuzz/checkpoint_fuzz.py`` runs every case;
``tests/fuzz/test_checkpoint_fuzz.py`` runs them in the test suite.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

PASSING = ("loaded", "clear_error")
# What each loader reads. A case breaks some of these parts; a loader must refuse it exactly when it reads
# a broken part ("combo": the parts are each fine but disagree, e.g. vocab.txt vs config.vocab_size).
LOADERS = {
    "config": {"config"},
    "tokenizer": {"vocab"},
    "torch_pretraining": {"config", "weights"},
    "torch_classifier": {"config", "weights"},
    "numpy_reference": {"config", "weights"},
    "fill_mask_cli": {"config", "weights", "vocab", "combo"},
}
MEMORY_CAP = 6 << 30   # bytes of address space a worker may map: far above a tiny model, far below 1e12 floats
TIME_LIMIT = 60        # seconds per loader call
MARKER = "CODE_RAN"    # a pickle payload creates this file


# ------------------------------------------------------------------------------------------- the cases

def _base(directory: str) -> None:
    """A valid tiny BERT checkpoint in ``directory``."""
    import torch

    from minibert.config import BertConfig
    from minibert.modeling import BertForPreTraining
    from minibert.tokenizer import BertTokenizer
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(27)] + ["the", "is", "a"]
    config = BertConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(directory, tokenizer=BertTokenizer({t: i for i, t in
                                                                                   enumerate(tokens)}))


def _config(d, **changes):
    path = os.path.join(d, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)  # allow_nan: NaN and Infinity are written as Python's JSON writes them


_DELETE = object()


def _write(d, name, data: bytes | str):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _weights(d, change):
    """Apply ``change(state) -> state`` to model.safetensors (torch tensors)."""
    from safetensors.torch import load_file, save_file
    path = os.path.join(d, "model.safetensors")
    state = change(load_file(path))
    os.remove(path)
    if state is not None:
        save_file({k: v.contiguous() for k, v in state.items()}, path)


def _set(state, key, fn):
    state[key] = fn(state[key])
    return state


def _pickle_payload(d):
    """A pytorch_model.bin whose unpickling would create MARKER, instead of model.safetensors."""
    import pickle
    import zipfile
    os.remove(os.path.join(d, "model.safetensors"))

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({os.path.join(d, MARKER)!r}, 'w').close()",))

    with zipfile.ZipFile(os.path.join(d, "pytorch_model.bin"), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Payload(), protocol=2))
        z.writestr("archive/version", "3\n")


def _pickle_plain(d):
    """The same weights as a plain pickle (not a torch zip) that runs code when loaded."""
    import pickle
    os.remove(os.path.join(d, "model.safetensors"))

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({os.path.join(d, MARKER)!r}, 'w').close()",))

    _write(d, "pytorch_model.bin", pickle.dumps(Payload()))


def _shard(d, target):
    """Split the weights into an index pointing at ``target(d)`` for the encoder tensors."""
    from safetensors.torch import load_file, save_file
    state = load_file(os.path.join(d, "model.safetensors"))
    os.remove(os.path.join(d, "model.safetensors"))
    encoder = {k: v for k, v in state.items() if ".encoder." in k}
    rest = {k: v for k, v in state.items() if k not in encoder}
    shard_path = target(d)
    written = shard_path if os.path.isabs(shard_path) else os.path.join(d, shard_path)  # relative to the folder
    os.makedirs(os.path.dirname(written), exist_ok=True)
    save_file(encoder, written)
    save_file(rest, os.path.join(d, "model-00001-of-00002.safetensors"))
    name = shard_path if os.path.isabs(shard_path) else os.path.relpath(os.path.join(d, shard_path), d)
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in rest},
                                            **{k: name for k in encoder}}}
    _write(d, "model.safetensors.index.json", json.dumps(index))


def _rename_layernorms(state):
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state.items()}


WORD = "bert.embeddings.word_embeddings.weight"
LN = "bert.encoder.layer.0.output.LayerNorm.weight"


def cases():
    """name -> (mutate(directory), parts it breaks, field the error should name or None)."""
    import torch
    c = {}

    def config_case(name, field, value, bad=("config",)):
        c[name] = (lambda d: _config(d, **{field: value}), set(bad), field)

    for field, value in [("vocab_size", 1e12), ("vocab_size", -5), ("vocab_size", "35"),
                         ("num_hidden_layers", 0), ("hidden_size", 15),
                         ("num_attention_heads", 0), ("hidden_size", "16"), ("pad_token_id", 1.5),
                         ("pad_token_id", 35), ("layer_norm_eps", float("nan")), ("layer_norm_eps", -1.0),
                         ("layer_norm_eps", "1e-12"), ("hidden_dropout_prob", 1.5),
                         ("attention_probs_dropout_prob", -0.1), ("hidden_act", "swish"),
                         ("initializer_range", "x"), ("initializer_range", float("inf")),
                         ("type_vocab_size", 0), ("num_attention_heads", 2.0), ("hidden_size", True)]:
        config_case(f"config {field}={value!r}", field, value)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers"):
        c[f"config without {field}"] = (lambda d, f=field: _config(d, **{f: _DELETE}), {"config"}, field)
    # the config alone is valid, the weights do not fit it: refused before anything is allocated
    for field, value in [("vocab_size", 10**12), ("max_position_embeddings", 10**9),
                         ("intermediate_size", 10**10), ("num_hidden_layers", 10**6)]:
        config_case(f"config {field}={value} (weights: tiny)", field, value, bad=("weights",))
    config_case("config vocab_size=50 (weights: 35)", "vocab_size", 50, bad=("weights", "combo"))
    config_case("config num_hidden_layers=3 (weights: 2)", "num_hidden_layers", 3, bad=("weights",))
    config_case("config intermediate_size=64 (weights: 32)", "intermediate_size", 64, bad=("weights",))
    c["config is a list"] = (lambda d: _write(d, "config.json", "[1, 2]"), {"config"}, None)
    c["config is not JSON"] = (lambda d: _write(d, "config.json", "{vocab_size: 3"), {"config"}, None)
    c["config is empty"] = (lambda d: _write(d, "config.json", ""), {"config"}, None)
    c["config nested 100k deep"] = (lambda d: _write(d, "config.json", '{"x": ' + "[" * 100000 + "]" * 100000
                                                       + "}"), {"config"}, None)
    c["config is not UTF-8"] = (lambda d: _write(d, "config.json", b'{"vocab_size": "\xff"}'), {"config"}, None)
    c["config.json missing"] = (lambda d: os.remove(os.path.join(d, "config.json")), {"config"}, None)
    # valid in disguise
    c["config with HF's extra fields"] = (lambda d: _config(d, architectures=["BertForMaskedLM"], model_type="bert",
                                                            transformers_version="4.40.0", torch_dtype="float32",
                                                            position_embedding_type="absolute", use_cache=True,
                                                            gradient_checkpointing=False), set(), None)
    c["config with a byte-order mark"] = (lambda d: _write(d, "config.json", b"\xef\xbb\xbf" + open(
        os.path.join(d, "config.json"), "rb").read()), set(), None)
    c["config gelu_new"] = (lambda d: _config(d, hidden_act="gelu_new"), set(), None)

    # weights
    def weight_case(name, change, bad=("weights",), field=None):
        c[name] = (lambda d: _weights(d, change), set(bad), field)

    weight_case("weights: NaN in word embeddings", lambda s: _set(s, WORD, lambda t: t.index_fill(0, torch.tensor([7]),
                                                                                                  float("nan"))),
                field=WORD)
    weight_case("weights: inf in a LayerNorm", lambda s: _set(s, LN, lambda t: t.index_fill(0, torch.tensor([0]),
                                                                                          float("inf"))), field=LN)
    weight_case("weights: bfloat16", lambda s: {k: v.to(torch.bfloat16) for k, v in s.items()}, bad=())
    weight_case("weights: float16", lambda s: {k: v.to(torch.float16) for k, v in s.items()}, bad=())
    weight_case("weights: float64", lambda s: {k: v.to(torch.float64) for k, v in s.items()}, bad=())
    weight_case("weights: one int32 tensor", lambda s: _set(s, LN, lambda t: t.to(torch.int32)), field=LN)
    weight_case("weights: one bool tensor", lambda s: _set(s, LN, lambda t: t > 0), field=LN)
    weight_case("weights: one int8 tensor", lambda s: _set(s, WORD, lambda t: t.to(torch.int8)), field=WORD)
    weight_case("weights: wrong shape", lambda s: _set(s, LN, lambda t: t[:-1]), field=LN)
    weight_case("weights: transposed matrix", lambda s: _set(s, "bert.encoder.layer.0.intermediate.dense.weight",
                                                             lambda t: t.t()),
                field="bert.encoder.layer.0.intermediate.dense.weight")
    weight_case("weights: an encoder tensor missing", lambda s: {k: v for k, v in s.items() if k != LN}, field=LN)
    weight_case("weights: no pretraining heads", lambda s: {k: v for k, v in s.items() if k.startswith("bert.")},
                bad=())
    weight_case("weights: an extra tensor", lambda s: {**s, "bert.something.else": torch.ones(3)}, bad=())
    weight_case("weights: gamma/beta names", _rename_layernorms, bad=())
    weight_case("weights: no tensors", lambda s: {"unrelated": torch.ones(1)})

    def corrupt(fn):
        def mutate(d):
            path = os.path.join(d, "model.safetensors")
            data = open(path, "rb").read()
            _write(d, "model.safetensors", fn(data))
        return mutate

    for name, fn in [("truncated", lambda b: b[:len(b) // 2]), ("empty", lambda b: b""),
                     ("header length 2**60", lambda b: (2**60).to_bytes(8, "little") + b[8:]),
                     ("header is not JSON", lambda b: b[:8] + b"\x00" * (int.from_bytes(b[:8], "little")) + b[
                         8 + int.from_bytes(b[:8], "little"):]),
                     ("offsets past the end", lambda b: b[:8] + b[8:8 + int.from_bytes(b[:8], "little")].replace(
                         b'"data_offsets":[0,', b'"data_offsets":[9999999,') + b[8 + int.from_bytes(b[:8], "little"):]),
                     ("random bytes", lambda b: os.urandom(4096))]:
        c[f"safetensors {name}"] = (corrupt(fn), {"weights"}, None)
    c["pytorch_model.bin: torch zip with a code payload"] = (_pickle_payload, {"weights"}, None)
    c["pytorch_model.bin: plain pickle with a code payload"] = (_pickle_plain, {"weights"}, None)
    c["no weights file"] = (lambda d: os.remove(os.path.join(d, "model.safetensors")), {"weights"}, None)

    def torch_bin(d):
        from safetensors.torch import load_file
        path = os.path.join(d, "model.safetensors")
        state = load_file(path)
        os.remove(path)
        torch.save(state, os.path.join(d, "pytorch_model.bin"))

    c["pytorch_model.bin: plain tensors"] = (torch_bin, set(), None)

    c["pytorch_model.bin: bfloat16"] = (lambda d: (_weights(d, lambda s: {k: v.to(torch.bfloat16)
                                                                           for k, v in s.items()}), torch_bin(d)),
                                        set(), None)
    c["pytorch_model.bin: NaN in word embeddings"] = (lambda d: (_weights(d, lambda s: _set(
        s, WORD, lambda t: t.index_fill(0, torch.tensor([3]), float("nan")))), torch_bin(d)), {"weights"}, WORD)
    c["pytorch_model.bin: a list, not a state dict"] = (lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                                                   torch.save([torch.ones(2)], os.path.join(
                                                                       d, "pytorch_model.bin"))), {"weights"}, None)
    c["sharded index"] = (lambda d: _shard(d, lambda d: "model-00002-of-00002.safetensors"), set(), None)
    c["sharded index pointing at ../"] = (lambda d: _shard(d, lambda d: os.path.join("..", os.path.basename(d) +
                                                                                    "-outside.safetensors")),
                                          {"weights"}, None)
    c["sharded index with an absolute path"] = (lambda d: _shard(d, lambda d: os.path.abspath(
        os.path.join(d, "..", os.path.basename(d) + "-abs.safetensors"))), {"weights"}, None)
    c["sharded index with a missing shard"] = (lambda d: (_shard(d, lambda d: "model-00002-of-00002.safetensors"),
                                                         os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))),
                                               {"weights"}, None)
    c["sharded index is not JSON"] = (lambda d: (_shard(d, lambda d: "model-00002-of-00002.safetensors"),
                                                 _write(d, "model.safetensors.index.json", "{weight_map")),
                                      {"weights"}, None)
    c["sharded index weight_map is a list"] = (lambda d: (_shard(d, lambda d: "model-00002-of-00002.safetensors"),
                                                          _write(d, "model.safetensors.index.json",
                                                                 '{"weight_map": [1]}')), {"weights"}, None)

    # added with the loader fixes of issue #11: more dtypes, integral floats, HF's null, odd shard names
    weight_case("weights: one complex64 tensor", lambda s: _set(s, LN, lambda t: t.to(torch.complex64)), field=LN)
    weight_case("weights: one float8 tensor", lambda s: _set(s, LN, lambda t: t.to(torch.float8_e4m3fn)),
                field=LN)
    weight_case("weights: int64 position_ids buffer (old HF checkpoints)",
                lambda s: {**s, "bert.embeddings.position_ids": torch.arange(32)[None]}, bad=())
    weight_case("weights: a third encoder layer (config: 2)", lambda s: {
        **s, **{k.replace("layer.1.", "layer.2."): v.clone() for k, v in s.items() if ".layer.1." in k}},
                field="num_hidden_layers")
    config_case("config intermediate_size=32.0", "intermediate_size", 32.0)
    config_case("config hidden_act=['gelu']", "hidden_act", ["gelu"])
    c["config classifier_dropout=null (as HF writes it)"] = (lambda d: _config(d, classifier_dropout=None), set(),
                                                             None)
    c["sharded index naming a subfolder"] = (lambda d: _shard(d, lambda d: os.path.join(
        "sub", "model-00002-of-00002.safetensors")), {"weights"}, None)
    c["sharded index with a byte-order mark"] = (lambda d: (_shard(d, lambda d: "model-00002-of-00002.safetensors"),
                                                            _write(d, "model.safetensors.index.json", b"\xef\xbb\xbf" +
                                                                   open(os.path.join(d, "model.safetensors.index.json"),
                                                                        "rb").read())), set(), None)

    # vocabularies
    c["vocab.txt missing"] = (lambda d: os.remove(os.path.join(d, "vocab.txt")), {"vocab"}, None)
    c["vocab.txt empty"] = (lambda d: _write(d, "vocab.txt", ""), {"vocab"}, None)
    c["vocab.txt not UTF-8"] = (lambda d: _write(d, "vocab.txt", b"[PAD]\n\xff\n"), {"vocab"}, None)
    c["vocab.txt with a byte-order mark"] = (lambda d: _write(d, "vocab.txt", b"\xef\xbb\xbf" + open(
        os.path.join(d, "vocab.txt"), "rb").read()), set(), None)
    c["vocab.txt longer than vocab_size"] = (lambda d: _write(d, "vocab.txt", open(os.path.join(
        d, "vocab.txt"), encoding="utf-8").read() + "extra\nmore\n"), {"combo"}, "vocab_size")
    c["tokenizer_config do_lower_case 'false'"] = (lambda d: _write(d, "tokenizer_config.json",
                                                                    '{"do_lower_case": "false"}'), {"vocab"},
                                                   "do_lower_case")
    return c


# ---------------------------------------------------------------------------------------- the loaders

def _finite(*arrays) -> bool:
    import numpy as np
    return all(bool(np.isfinite(np.asarray(a, dtype=np.float64)).all()) for a in arrays)


def run_loader(loader: str, directory: str) -> str | None:
    """Load ``directory`` with ``loader``; raises what the loader raises. Returns a problem with what was
    loaded (non-finite outputs), or None."""
    import numpy as np
    import torch
    ids = [[2, 5, 6, 4, 3]]
    if loader == "config":
        from minibert.config import BertConfig
        BertConfig.from_pretrained(directory)
    elif loader == "tokenizer":
        from minibert.tokenizer import BertTokenizer
        BertTokenizer.from_pretrained(directory)
    elif loader in ("torch_pretraining", "torch_classifier"):
        from minibert import modeling
        cls = modeling.BertForPreTraining if loader == "torch_pretraining" else modeling.BertForSequenceClassification
        model = cls.from_pretrained(directory).eval()
        with torch.no_grad():
            out = model(torch.tensor(ids))
        logits = out.prediction_logits if loader == "torch_pretraining" else out.logits
        if not _finite(logits.float().numpy()):
            return "the loaded model gives non-finite logits"
    elif loader == "numpy_reference":
        from minibert.reference import model as reference
        m = reference.BertForPreTraining.from_pretrained(directory)
        out = m.forward(np.array(ids), np.zeros((1, 5), dtype=np.int64), np.ones((1, 5)))
        values = out[0] if isinstance(out, tuple) else out
        arrays = values.values() if isinstance(values, dict) else [values]
        if not _finite(*[a for a in arrays if isinstance(a, np.ndarray) and a.dtype.kind == "f"]):
            return "the loaded model gives non-finite outputs"
    elif loader == "fill_mask_cli":
        import contextlib
        import io
        from minibert import cli
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli.main(["fill-mask", "--model", directory, "the [MASK] is a"])
        if rc == 2:
            raise ValueError(err.getvalue().strip()[-500:])
        if rc != 0:
            raise RuntimeError(f"exit status {rc}: {err.getvalue()[-500:]}")
        if "nan" in out.getvalue().lower():
            return f"fill-mask printed NaN: {out.getvalue()[-200:]}"
    else:
        raise KeyError(loader)
    return None


def _classify(case, loader, directory) -> dict:
    _, bad, field = CASES_SPEC[case]
    should_fail = bool(bad & LOADERS[loader])
    try:
        problem = run_loader(loader, directory)
    except (ValueError, OSError) as e:
        message = f"{type(e).__name__}: {e}"[:600]
        if not should_fail:
            return {"outcome": "refused_valid", "message": message}
        if field and field not in str(e):
            return {"outcome": "traceback", "message": f"error does not name {field!r}: {message}"}
        return {"outcome": "clear_error", "message": message}
    except BaseException as e:  # noqa: BLE001 - any other escape is a traceback for the user
        return {"outcome": "traceback", "message": f"{type(e).__name__}: {e}"[:600]}
    if problem:
        return {"outcome": "accepted_invalid", "message": problem}
    if should_fail:
        return {"outcome": "accepted_invalid", "message": f"loaded; the case breaks {sorted(bad)}"}
    return {"outcome": "loaded"}


CASES_SPEC: dict = {}


def _worker(root: str) -> None:
    """Run (case, loader) pairs read from stdin, one JSON result line each, under a memory cap and alarm."""
    import resource
    import signal
    import warnings
    warnings.simplefilter("ignore")
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    def timeout(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, timeout)
    CASES_SPEC.update(cases())
    for line in sys.stdin:
        case, loader = json.loads(line)
        directory = os.path.join(root, _slug(case))
        signal.alarm(TIME_LIMIT)
        try:
            result = _classify(case, loader, directory)
        except TimeoutError:
            result = {"outcome": "timeout", "message": f"still running after {TIME_LIMIT} s"}
        finally:
            signal.alarm(0)
        if os.path.exists(os.path.join(directory, MARKER)):
            result = {"outcome": "code_execution", "message": "a pickle payload ran"}
        print(json.dumps(result), flush=True)


def _slug(case: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in case)[:80] + f"_{zlib.crc32(case.encode())}"


def build(root: str, names=None) -> list[str]:
    """Write every case's folder under ``root``; returns the case names."""
    base = os.path.join(root, "_base")
    _base(base)
    all_cases = cases()
    names = list(all_cases) if names is None else names
    for name in names:
        directory = os.path.join(root, _slug(name))
        shutil.copytree(base, directory)
        all_cases[name][0](directory)
    return names


def fuzz(names=None, loaders=tuple(LOADERS)) -> dict:
    """Build the cases in a temporary folder and run each through each loader; returns the report."""
    with tempfile.TemporaryDirectory(prefix="minibert-ckpt-fuzz-") as root:
        names = build(root, names)
        pairs = [(n, loader) for n in names for loader in loaders]
        results = []
        # The workers must import the minibert this process imported (not an installed copy elsewhere).
        import minibert
        source_root = os.path.dirname(os.path.dirname(os.path.abspath(minibert.__file__)))
        pythonpath = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONPATH": pythonpath}
        while len(results) < len(pairs):
            todo = pairs[len(results):]
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", root],
                                  input="".join(json.dumps(p) + "\n" for p in todo), capture_output=True,
                                  text=True, env=env)
            done = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
            results += done
            if len(done) < len(todo):
                results.append({"outcome": "crash", "message": f"worker exited with {proc.returncode}: "
                                f"{proc.stderr.strip()[-300:]}"})
        for (name, loader), r in zip(pairs, results):
            r.update(case=name, loader=loader)
    counts = collections.defaultdict(collections.Counter)
    for r in results:
        counts[r["loader"]][r["outcome"]] += 1
    return {"cases": len(names), "counts": {k: dict(v) for k, v in counts.items()},
            "failures": [r for r in results if r["outcome"] not in PASSING]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    report = fuzz()
    outcomes = ("loaded", "clear_error", "traceback", "accepted_invalid", "refused_valid", "code_execution",
                "timeout", "crash")
    print(f"{report['cases']} crafted folders")
    print(f"{'loader':<20}" + "".join(f"{o:>17}" for o in outcomes))
    for loader, c in report["counts"].items():
        print(f"{loader:<20}" + "".join(f"{c.get(o, 0):>17}" for o in outcomes))
    for f in report["failures"]:
        print(f"- [{f['loader']}] {f['case']}: {f['outcome']}: {f['message'][:300]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
