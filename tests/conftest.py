"""Fixtures shared by several test modules."""
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a shared, busy CPU makes two threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_at_vector_width():
    """``run(script, vector_bytes)``: run a Python script in a fresh process whose CPU kernels use the build
    for that vector width ("64" AVX-512, "32" AVX2+FMA, "16" SSE2; MINIBERT_CPU_VECTOR_BYTES is read once per
    process, hence the subprocess), and require it to succeed and print "ok"."""
    def run(script: str, vector_bytes: str) -> None:
        env = dict(os.environ, MINIBERT_CPU_VECTOR_BYTES=vector_bytes)
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    return run


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(corpus file, vocab dir) for tiny pretraining runs: 40 documents of Python's language reference (part
    of the built-in corpus) and a 300-token vocabulary trained on them."""
    import pydoc_data.topics

    from minibert.data import corpus
    from minibert.tokenizer.train import train_vocab
    root = tmp_path_factory.mktemp("pretrain_data")
    path = str(root / "corpus.txt")
    topics = pydoc_data.topics.topics
    topics = [corpus.text_to_sentences(topics[name]) for name in sorted(topics)]
    corpus.write_corpus([doc for doc in topics if len(doc) > 3][:40], path)
    vocab_dir = str(root / "vocab")
    train_vocab(path, 300, vocab_dir, held_out_every=None)
    return path, vocab_dir
