"""SQuAD examples: one question about one context paragraph, read from SQuAD v1.1 / v2.0 JSON.

A SQuAD file is ``{"version": ..., "data": [article, ...]}``; an article is ``{"title", "paragraphs"}``;
a paragraph is ``{"context": str, "qas": [question, ...]}``; a question is ``{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"}`` (``is_impossible`` and unanswerable questions
only in v2.0; the official test sets leave ``answers`` out). ``answer_start`` is a character offset into
the context.

Reading is strict about the structure and says which file and which question is wrong. One thing it
lets through on purpose: an ``answer_start`` inside the context whose text differs from ``text``. The
official evaluation compares texts only, so such a gold answer still scores; only training needs the
offset, and ``make_features(training=True)`` warns and skips those examples, as google-research/bert's
run_squad.py does ("Could not find answer").
"""
from __future__ import annotations

import dataclasses
import json
import os


@dataclasses.dataclass
class SquadExample:
    """One question about one context.

    ``answers``: ``[{"text": str, "answer_start": char offset into context}]``; several in the dev sets
    (one per annotator), one in training, none for a v2.0 question with ``is_impossible=True``.
    """

    qas_id: str
    question: str
    context: str
    answers: list[dict]
    is_impossible: bool = False


def read_squad(path) -> list[SquadExample]:
    """Read a SQuAD v1.1 or v2.0 JSON file into examples, in file order.

    Raises ``ValueError`` naming the file (and the question id where there is one) for: bytes that are
    not UTF-8, text that is not JSON, a missing or mistyped field, an empty context or question, a
    repeated question id, an empty answer text, an ``answer_start`` that is not an int inside the
    context, a question both ``is_impossible`` and answered, and a file with no questions.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark, as json.load on a text file does not
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e}); SQuAD files are UTF-8 JSON: re-save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a SQuAD file (Python's JSON parser gives up)") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: a SQuAD file is a JSON object whose 'data' is a list of articles")
    examples, seen = [], set()
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            if not context.strip():
                raise ValueError(f"{where}: the context is empty")
            for qa in _field(paragraph, "qas", list, where):
                qas_id = _field(qa, "id", str, f"{where}.qas")
                where_qa = f"{path}: question {qas_id!r}"
                if qas_id in seen:
                    raise ValueError(f"{where_qa} appears twice; question ids must be unique (predictions "
                                     "are keyed by them)")
                seen.add(qas_id)
                examples.append(_read_question(qa, qas_id, context, where_qa))
    if not examples:
        raise ValueError(f"{path}: holds no questions")
    return examples


def _read_question(qa: dict, qas_id: str, context: str, where: str) -> SquadExample:
    """One ``qas`` entry -> a SquadExample, checked (``where`` names it in errors)."""
    question = _field(qa, "question", str, where)
    if not question.strip():
        raise ValueError(f"{where}: the question is empty")
    answers = qa.get("answers", [])  # absent in the official test sets
    if not isinstance(answers, list):
        raise ValueError(f"{where}: 'answers' must be a list of {{'text', 'answer_start'}}")
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise ValueError(f"{where}: 'is_impossible' must be true or false, got {impossible!r}")
    if impossible and answers:
        raise ValueError(f"{where} is marked is_impossible but lists answers; v2.0 keeps those under "
                         "'plausible_answers'")
    for k, answer in enumerate(answers):
        _check_answer(answer, context, f"{where} answer {k}")
    return SquadExample(qas_id, question, context,
                        [{"text": a["text"], "answer_start": a["answer_start"]} for a in answers], impossible)


_JSON_TYPES = {str: "a string", list: "a list", int: "an integer"}


def _field(obj, name: str, kind: type, where: str):
    """``obj[name]``, which must exist and be a ``kind``; else a ValueError saying so."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if name not in obj:
        raise ValueError(f"{where}: the field {name!r} is missing")
    if not isinstance(obj[name], kind):
        raise ValueError(f"{where}: {name!r} must be {_JSON_TYPES[kind]}, got {json.dumps(obj[name])[:40]}")
    return obj[name]


def _check_answer(answer, context: str, where: str) -> None:
    """An answer needs a non-empty ``text`` and an int ``answer_start`` with the text inside the context."""
    text = _field(answer, "text", str, where)
    start = _field(answer, "answer_start", int, where)
    if isinstance(start, bool):
        raise ValueError(f"{where}: 'answer_start' must be an integer, got {json.dumps(start)}")
    if not text.strip():
        raise ValueError(f"{where}: the answer text is empty")
    if not 0 <= start <= len(context) - len(text):
        raise ValueError(f"{where}: answer_start={start} puts the {len(text)}-character answer {text!r} outside "
                         f"the {len(context)}-character context")
