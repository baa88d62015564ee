"""Helpers for the handout's notebook: load the student's own files, afresh on every call."""
from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path


def load(filename: str, folder: str = "."):
    """Import the student's ``folder/filename`` as a new module (a fresh import each call, so an edited
    file is picked up without restarting the kernel). The module's name is unique, so it never replaces
    minibert's own module of the same name."""
    path = Path(folder) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the notebook in the handout folder")
    name = f"student_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their class's module up here
    spec.loader.exec_module(module)
    return module
