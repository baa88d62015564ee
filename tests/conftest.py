"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a shared, busy CPU makes two threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
