"""Files in and out: crash-safe writing, and the one reader of JSON configuration files.

Everything minibert writes goes to a temporary name and is renamed. ``os.replace`` is atomic on POSIX and
Windows, so a reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file left by an interrupted process.

Every JSON file minibert reads as configuration (``config.json``, ``tokenizer_config.json``,
``tokenizer.json``, a sharded checkpoint's index) goes through :func:`read_json`, so a bad one is always
a ``ValueError`` that names the file, never a traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temporary file beside ``path``; on clean exit, fsync it and rename it to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_json(path: str) -> dict:
    """A UTF-8 JSON file holding an object -> that object (a dict).

    Raises ``ValueError`` naming the file when it is not UTF-8 (a byte-order mark is allowed), not JSON,
    nested too deeply for Python's parser, or holds something other than an object.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} is not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path!r} is nested too deeply to be a configuration file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} must hold a JSON object ({{...}}), not {type(data).__name__}")
    return data
