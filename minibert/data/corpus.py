"""Text corpora as documents of sentences: the built-in corpus and the user's own text files.

BERT pretraining reads its text in the format of the original ``create_pretraining_data.py``: one
sentence per line, a blank line between documents. Documents matter because next-sentence prediction
needs "the sentence that really came next" (same document) and "a random sentence" (another document).
Here a corpus is therefore a sequence of documents, each a ``list[str]`` of sentences.

The built-in corpus is English prose that ships with every Python install, so minibert trains without
downloading anything: the language reference topics behind ``help("if")`` (``pydoc_data.topics``) and the
docstrings of the pure-Python standard library, read with ``ast`` from the source files (nothing is
imported, so nothing runs). A rule-based splitter keeps the prose and drops the code.

Try it::

    python -m minibert corpus --out runs/builtin.txt
"""
from __future__ import annotations

import ast
import functools
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence

from minibert.files import atomic_open

# Standard-library folders that hold tests, third-party packages or generated tables, not prose.
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                           "encodings"})

# A sentence does not end after these, even when a capital letter follows ("e.g. Python").
# "etc." is deliberately absent: "lists, tuples, etc. The next ..." usually does end a sentence, and a
# sentence only ever ends before a capitalised word, so "etc. and so on" never splits anyway.
_ABBREVIATIONS = frozenset({"e.g", "i.e", "cf", "vs", "viz", "al", "approx", "resp", "esp", "incl",
                            "mr", "mrs", "ms", "dr", "prof", "sec", "fig", "eq", "no", "vol", "ch"})

# A "prose word": letters (with inner apostrophes or hyphens), optionally wrapped in quotes, brackets
# and trailing punctuation. "os.path.join", "x[i]", "__init__()" and "a=b" are not prose words.
_PROSE_WORD = re.compile(r"""^[("'“‘]*[A-Za-z]+(?:['’-][A-Za-z]+)*[)"'”’.,;:!?]*$""")
_MIN_PROSE_FRACTION = 0.75  # share of a sentence's words that must be prose words
_MIN_SENTENCE_WORDS = 3

_STARTS_CAPITALISED = re.compile(r"""^[("'“‘]*[A-Z]""")
_BULLET = re.compile(r"^(?:[*+•-]|\d+[.)]|\([a-z0-9]\)|[a-z][.)])\s+")
_HEADING_RULE = re.compile(r"^([=\-*~^#\"'`+.])\1{2,}$")
_CODE_LINE = re.compile(r"^(>>>|\.\.\.|\$ |%|@|#)|^(async def|def|class) \w+.*:$|^(from|import) [\w.]+|"
                        r"::=|->|\s=\s|[{}]")
# reST inline markup, rewritten to the text Sphinx would show: :role:`~mod.name` -> name (the tilde keeps
# the last component), :role:`title <target>` -> title, ``code`` -> code, *em* -> em.
_REST_MARKUP = [
    (re.compile(r":[a-zA-Z:]+:`~[\w.]*?(\w+)`"), r"\1"),
    (re.compile(r":[a-zA-Z:]+:`([^`<]*?)\s*(?:<[^>]*>)?`"), r"\1"),
    (re.compile(r"`([^`<]+?)\s*<[^>]*>`_+"), r"\1"),
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"`([^`]+)`_*"), r"\1"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\1"),
    (re.compile(r"\s\[\d+\]"), ""),  # footnote references
]


# ----------------------------------------------------------------------------------------------------
# From raw documentation text to sentences

def _is_code_line(line: str) -> bool:
    """True when a line looks like code, a grammar rule or a table rather than prose."""
    stripped = line.strip()
    if _CODE_LINE.search(stripped):
        return True
    words = stripped.split()
    if len(words) < 3:
        return False  # too short to judge: often the end of a sentence ("returned by 'f()'.")
    prose = sum(bool(_PROSE_WORD.match(w)) for w in words)
    return prose < 0.5 * len(words)


def prose_paragraphs(text: str) -> list[str]:
    """Split documentation text into paragraphs of prose, one string each, dropping the code.

    Dropped: doctest sessions (``>>>`` up to the next blank line), literal blocks (the indented block after
    a line ending in ``::``), reST directives (``.. note::`` and their indented body), section headings
    (a title line underlined with ``===``), and any line that looks like code. A bullet starts a new
    paragraph; a dropped line ends one, so prose never runs across the code that was removed.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    skip_deeper_than = None  # inside a literal block or directive: skip lines indented more than this
    in_doctest = False

    def flush():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for raw in text.expandtabs(8).splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if not stripped:
            flush()
            in_doctest = False
            continue
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if in_doctest or stripped.startswith(">>>"):
            flush()
            in_doctest = True
            continue
        if _HEADING_RULE.match(stripped):
            current[-1:] = []  # the line above was the heading's title
            flush()
            continue
        if stripped.startswith(".. "):
            flush()
            skip_deeper_than = indent
            continue
        bullet = _BULLET.match(stripped)
        if bullet:
            flush()
            stripped = stripped[bullet.end():]
        if _is_code_line(stripped):
            flush()
            continue
        if stripped.endswith("::"):
            # reST: "Example::" reads as "Example:" and introduces an indented code block.
            stripped = stripped[:-1]
            current.append(stripped)
            flush()
            skip_deeper_than = indent
            continue
        current.append(stripped)
    flush()
    return paragraphs


def _strip_markup(text: str) -> str:
    for pattern, replacement in _REST_MARKUP:
        text = pattern.sub(replacement, text)
    return text


def _ends_sentence(word: str, next_word: str) -> bool:
    """Does a sentence end after ``word``, given the word that follows it?"""
    core = word.rstrip(")\"'”’")
    if not core.endswith((".", "!", "?")) or core.endswith(".."):
        return False  # no full stop, or an ellipsis "..."
    if not _STARTS_CAPITALISED.match(next_word):
        return False  # "3.5 or later", "e.g. x", "os.path" never split: the next word must be capitalised
    body = core.rstrip(".!?").lstrip("(\"'“‘")
    if body.lower() in _ABBREVIATIONS:
        return False
    if len(body) == 1 and body.isupper():
        return False  # an initial: "J. Smith"
    return True


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph of prose into sentences (rule-based; see ``_ends_sentence``).

    A full stop inside a token ("3.14", "os.path.join") never splits, because a split needs whitespace
    and then a capitalised word; abbreviations ("e.g.", "i.e.", "cf.") and initials never end a sentence.
    """
    words = paragraph.split()
    sentences, start = [], 0
    for i, word in enumerate(words):
        if i + 1 == len(words) or _ends_sentence(word, words[i + 1]):
            sentences.append(" ".join(words[start:i + 1]))
            start = i + 1
    return sentences


def is_prose_sentence(sentence: str) -> bool:
    """Keep a sentence when it reads as English: capitalised, punctuated at the end, mostly real words."""
    words = sentence.split()
    if len(words) < _MIN_SENTENCE_WORDS:
        return False
    if not _STARTS_CAPITALISED.match(sentence):
        return False
    if not sentence.rstrip(")\"'”’").endswith((".", "!", "?", ":")):
        return False
    prose = sum(bool(_PROSE_WORD.match(w)) for w in words)
    return prose >= _MIN_PROSE_FRACTION * len(words)


def text_to_sentences(text: str) -> list[str]:
    """Documentation text (plain or reST) -> the list of its prose sentences, code and markup removed."""
    sentences = []
    for paragraph in prose_paragraphs(text):
        sentences.extend(s for s in split_sentences(_strip_markup(paragraph)) if is_prose_sentence(s))
    return sentences


# ----------------------------------------------------------------------------------------------------
# The built-in corpus

def _stdlib_source_files() -> list[str]:
    """The pure-Python standard library's ``.py`` files, in a fixed (sorted) order."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        files.extend(os.path.join(directory, n) for n in sorted(names) if n.endswith(".py"))
    return files


def _docstrings(path: str) -> list[str]:
    """The module, class and function docstrings of one source file, in source order (no import)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # e.g. lib2to3's deliberately broken test data: not prose anyway
    nodes = sorted(_definitions(tree), key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def _definitions(node: ast.AST) -> Iterator[ast.AST]:
    """The module, classes and functions in ``node``, at any depth.

    Definitions only ever sit in statement lists (bodies of modules, classes, functions, if/for/while/
    with/try/match), so walking those and skipping expressions finds them all, several times faster
    than ``ast.walk``.
    """
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        yield node
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, field, ()):
            if isinstance(child, ast.AST):
                yield from _definitions(child)


@functools.lru_cache(maxsize=1)
def _builtin_documents() -> tuple[tuple[str, ...], ...]:
    import pydoc_data.topics

    documents = []
    for name in sorted(pydoc_data.topics.topics):
        documents.append(text_to_sentences(pydoc_data.topics.topics[name]))
    seen = set()  # many docstrings repeat ("Return self==value."): keep each once
    for path in _stdlib_source_files():
        sentences = []
        for docstring in _docstrings(path):
            if docstring not in seen:
                seen.add(docstring)
                sentences.extend(text_to_sentences(docstring))
        documents.append(sentences)
    return tuple(tuple(doc) for doc in documents if doc)


def builtin_documents() -> list[list[str]]:
    """The built-in corpus: one document per language-reference topic and per standard-library module.

    Deterministic for a given Python version (sorted topics and files, no imports of the modules
    themselves) and computed once per process. Returns a fresh list, so callers may modify it.
    """
    return [list(doc) for doc in _builtin_documents()]


def corpus_stats(documents: Iterable[Sequence[str]]) -> dict:
    """Size of a corpus: documents, sentences, words (whitespace-separated) and megabytes of UTF-8 text."""
    n_docs = n_sentences = n_words = n_bytes = 0
    for doc in documents:
        n_docs += 1
        n_sentences += len(doc)
        n_words += sum(len(s.split()) for s in doc)
        n_bytes += sum(len(s.encode("utf-8")) + 1 for s in doc) + 1  # + newlines, + blank line
    return {"documents": n_docs, "sentences": n_sentences, "words": n_words, "megabytes": n_bytes / 1e6}


def write_corpus(documents: Iterable[Sequence[str]], path: str | os.PathLike) -> dict:
    """Write documents in BERT format (a sentence per line, a blank line between documents), atomically.

    Returns the corpus statistics (see ``corpus_stats``).
    """
    documents = [list(doc) for doc in documents]
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in documents:
            for sentence in doc:
                f.write(sentence + "\n")
            f.write("\n")
    return corpus_stats(documents)


# ----------------------------------------------------------------------------------------------------
# The user's corpora

def _corpus_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files and folders (recursively, ``*.txt``, sorted) into the list of files to read."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                           if n.endswith(".txt"))
            if not found:
                raise ValueError(f"corpus folder {path!r} contains no *.txt files")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"corpus path {path!r} does not exist")
    return files


def _read_file_documents(path: str) -> Iterator[list[str]]:
    """Stream the documents of one BERT-format file; a decoding error names the file and byte offset."""
    document: list[str] = []
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}: not valid UTF-8 at byte offset {offset + e.start} "
                    f"(byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8, "
                    f"e.g. iconv -f latin1 -t utf-8") from None
            if offset == 0:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text
            offset += len(raw)
            line = line.strip()
            if line:
                document.append(line)
            elif document:
                yield document
                document = []
    if document:
        yield document  # a file's end also ends its last document


def read_documents(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[list[str]]:
    """Stream documents from BERT-format text files and folders (``*.txt``, recursively, sorted).

    Only one document is in memory at a time. Missing paths raise ``FileNotFoundError`` at once; an
    empty corpus and a file that is not UTF-8 (named, with the byte offset) raise ``ValueError`` while
    reading.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no corpus paths given")
    files = _corpus_files(paths)

    def documents():
        empty = True
        for path in files:
            for document in _read_file_documents(path):
                empty = False
                yield document
        if empty:
            raise ValueError(f"the corpus {', '.join(map(str, paths))} contains no text")

    return documents()


def load_corpus(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterable[list[str]]:
    """``"builtin"`` -> the built-in corpus (a list); a path or list of paths -> ``read_documents(paths)``."""
    if isinstance(spec, str) and spec == "builtin":
        return builtin_documents()
    if not isinstance(spec, (str, os.PathLike)) and list(spec) == ["builtin"]:
        return builtin_documents()
    return read_documents(spec)


def held_out_split(documents: Iterable[Sequence[str]], held_out: bool,
                   every: int = 10) -> Iterator[Sequence[str]]:
    """Every ``every``-th document (the 10th, 20th, ...) when ``held_out``, the others when not.

    Streams, so a corpus read from disk can be split without holding it in memory: read it twice.
    """
    if every < 2:
        raise ValueError(f"held-out split needs every >= 2, got {every}")
    for i, doc in enumerate(documents):
        if (i % every == every - 1) == held_out:
            yield doc
