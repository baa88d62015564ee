"""Corpora: the sentence splitter, the prose filter, the built-in corpus, and reading BERT-format files."""
import os
import random
import re

import pydoc_data.topics
import pytest

from minibert.data import corpus


# ----------------------------------------------------------------------------------------------------
# Sentence splitting and the prose filter

def test_split_sentences_handles_abbreviations_decimals_and_dotted_names():
    text = ("Use e.g. Python 3.11 for this. It calls os.path.join on i.e. Paths. "
            "See J. Smith, cf. Chapter 2. Lists, tuples, etc. The next one? Yes! Done.")
    assert corpus.split_sentences(text) == [
        "Use e.g. Python 3.11 for this.",
        "It calls os.path.join on i.e. Paths.",
        "See J. Smith, cf. Chapter 2.",
        "Lists, tuples, etc.",
        "The next one?",
        "Yes!",
        "Done.",
    ]


def test_split_sentences_needs_a_capital_after_the_stop():
    assert corpus.split_sentences("Version 3. or later works. (Quoted) too.") == [
        "Version 3. or later works.", "(Quoted) too."]
    assert corpus.split_sentences('He said "Stop." Then left.') == ['He said "Stop."', "Then left."]


def test_prose_filter():
    assert corpus.is_prose_sentence("The value is returned to the caller.")
    assert corpus.is_prose_sentence("The rules are as follows:")
    assert not corpus.is_prose_sentence("the value is returned to the caller.")  # a fragment
    assert not corpus.is_prose_sentence("Return value")  # too short, no full stop
    assert not corpus.is_prose_sentence("X = foo(a[1], b={2: 3}) + bar.baz(q).")  # code


def test_prose_paragraphs_drop_code_doctests_directives_and_headings():
    text = """Section title
=============

The first paragraph of text
continues here. An example::

    x = compute(1, 2)
    print(x)

After the literal block comes prose.

>>> 1 + 1
2

.. note::
   A directive body is not prose.

* A bullet item that wraps
  onto a second line.
* Another item.
"""
    assert corpus.prose_paragraphs(text) == [
        "The first paragraph of text continues here. An example:",
        "After the literal block comes prose.",
        "A bullet item that wraps onto a second line.",
        "Another item.",
    ]


def test_text_to_sentences_strips_rest_markup():
    text = ("Call :func:`~os.path.join` with ``a`` and *b* or **c**. "
            "It returns :class:`str` [1] and never fails.")
    assert corpus.text_to_sentences(text) == [
        "Call join with a and b or c.", "It returns str and never fails."]


# ----------------------------------------------------------------------------------------------------
# The built-in corpus

def test_builtin_corpus_is_prose_from_the_python_docs():
    documents = corpus.builtin_documents()
    stats = corpus.corpus_stats(documents)
    assert stats["documents"] > 300 and stats["sentences"] > 10_000 and stats["megabytes"] > 1.0
    sentences = [s for doc in documents for s in doc]
    assert all(s and "\n" not in s and s == s.strip() for s in sentences)
    assert not any(s.startswith((">>>", "...")) or "::=" in s or s.endswith("::") for s in sentences)
    # The first documents are the pydoc topics in sorted order (topics without prose give no document);
    # every sentence of a topic document is a word-for-word piece of that topic's text, up to *emphasis*
    # marks, bullets and footnote numbers: the splitter reorders and invents nothing.
    def plain(text):
        return " ".join(re.sub(r"\s*\[\d+\]|\*", "", text).split())

    topics = [plain(pydoc_data.topics.topics[name]) for name in sorted(pydoc_data.topics.topics)]
    t = 0
    for doc in documents[:60]:
        while t < len(topics) and not all(plain(s) in topics[t] for s in doc):
            t += 1
        assert t < len(topics), doc[:2]
        t += 1
    # Stable across calls, and callers get their own copy.
    again = corpus.builtin_documents()
    assert again == documents and again is not documents
    again[0].append("changed")
    assert corpus.builtin_documents()[0] == documents[0]


# ----------------------------------------------------------------------------------------------------
# Writing and reading BERT-format files

def _random_documents(rng, n_docs):
    words = ["alpha", "beta", "gamma", "déjà", "vu", "naïve", "日本", "x1", "Über"]
    return [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + "."
             for _ in range(rng.randint(1, 5))] for _ in range(n_docs)]


def test_write_then_read_round_trip(tmp_path):
    rng = random.Random()
    documents = _random_documents(rng, 7)
    path = tmp_path / "sub" / "corpus.txt"
    stats = corpus.write_corpus(documents, path)
    assert list(corpus.read_documents(path)) == documents
    assert stats == corpus.corpus_stats(documents)
    assert stats["documents"] == 7 and stats["sentences"] == sum(map(len, documents))
    assert stats["megabytes"] == pytest.approx(os.path.getsize(path) / 1e6)
    assert os.listdir(path.parent) == ["corpus.txt"]  # no temporary file left behind


def test_read_documents_streams_folders_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("Second file.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("\ufeffFirst doc, line one.\nLine two.\n\n\n  Doc two.  \n",
                                    encoding="utf-8")
    (tmp_path / "skip.md").write_text("Not a corpus file.\n", encoding="utf-8")
    documents = corpus.read_documents(tmp_path)
    assert iter(documents) is documents  # a stream, not a list
    assert list(documents) == [["First doc, line one.", "Line two."], ["Doc two."], ["Second file."]]


def test_read_documents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.read_documents(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt files"):
        corpus.read_documents(tmp_path / "empty")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no text"):
        list(corpus.read_documents(blank))
    bad = tmp_path / "latin1.txt"
    prefix = "Good line.\nCaf".encode("utf-8")
    bad.write_bytes(prefix + "é au lait.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{bad}: not valid UTF-8 at byte offset {len(prefix)}")):
        list(corpus.read_documents(bad))


def test_load_corpus_and_held_out_split(tmp_path):
    assert corpus.load_corpus("builtin") == corpus.builtin_documents()
    assert corpus.load_corpus(["builtin"]) == corpus.builtin_documents()
    documents = _random_documents(random.Random(), 25)
    corpus.write_corpus(documents, tmp_path / "c.txt")
    assert list(corpus.load_corpus([str(tmp_path / "c.txt")])) == documents
    held = list(corpus.held_out_split(documents, held_out=True))
    kept = list(corpus.held_out_split(documents, held_out=False))
    assert held == [documents[9], documents[19]]
    assert kept == [d for i, d in enumerate(documents) if i not in (9, 19)]
    with pytest.raises(ValueError, match="every >= 2"):
        list(corpus.held_out_split(documents, held_out=True, every=1))
