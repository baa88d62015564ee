"""How the memory-bound benchmarks get their output memory: ``--huge-pages`` and ``--reuse-memory``.

Every op in ``gelu.py`` and ``layernorm.py`` allocates its output, as it would in a model. glibc serves an
allocation of more than 32 MB (16M float32 elements is 64 MB) with a fresh ``mmap`` and returns it to the
kernel on free, so every call gets fresh pages: the first write to each 4 KB page faults into the kernel,
which zeroes it. At 16M elements that costs several times the arithmetic, the same for every op that
allocates (``clone()`` included), and it varies from run to run. A plain copy into a buffer that is
already mapped has no faults: it is the ceiling the benchmarks compare with.

Two switches change where the output memory comes from. Both must be in the environment before the process
starts (glibc reads its tunables at start-up, torch its switch at the allocator's first use), so the
script restarts itself with them:

* ``--huge-pages``: torch's own ``THP_MEM_ALLOC_ENABLE=1``: allocations of 2 MB and more are aligned for
  transparent huge pages, 512 times fewer faults (the kernel still zeroes every page);
* ``--reuse-memory``: glibc's tunables ``glibc.malloc.mmap_max=0`` (never ``mmap`` an allocation: take it
  from the heap) and a trim threshold of 64 GB (never give freed heap memory back), so a freed output is
  handed to the next call already mapped, as a caching allocator (jemalloc, tcmalloc, or torch's on a GPU)
  does. This measures the kernels themselves; it is also what a long training run can set for itself.

This module imports nothing heavy: a benchmark calls :func:`restart_if_requested` first thing.
"""
from __future__ import annotations

import os
import sys

MODES = {
    "--huge-pages": {"THP_MEM_ALLOC_ENABLE": "1"},
    "--reuse-memory": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"},
}
HELP = {
    "--huge-pages": "allocate on transparent huge pages (THP_MEM_ALLOC_ENABLE=1; see benchmarks/_allocator.py)",
    "--reuse-memory": "reuse freed memory instead of fresh pages (glibc tunables; see benchmarks/_allocator.py)",
}


def requested(argv: list[str]) -> str | None:
    """The allocator flag among ``argv`` (at most one), or None for the default (fresh pages)."""
    flags = [a for a in argv if a in MODES]
    if len(flags) > 1:
        raise SystemExit(f"choose one of {' and '.join(MODES)}, not both")
    return flags[0] if flags else None


def merged(key: str, value: str, current: str | None) -> str:
    """``key``'s value with the mode's ``value`` in it. GLIBC_TUNABLES is a ``:``-separated list: tunables the
    user set already are kept, and ours take their place when they name the same tunable."""
    if key != "GLIBC_TUNABLES" or not current:
        return value
    ours = dict(item.split("=", 1) for item in value.split(":"))
    kept = [item for item in current.split(":") if item and item.split("=", 1)[0] not in ours]
    return ":".join(kept + [value])


def restart_if_requested() -> str | None:
    """Restart this script with the chosen mode's environment if it is not set yet; returns the mode's name
    (``"huge-pages"``, ``"reuse-memory"``) or None."""
    flag = requested(sys.argv[1:])
    if flag is None:
        return None
    env = {k: merged(k, v, os.environ.get(k)) for k, v in MODES[flag].items()}
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return flag[2:]


def add_arguments(parser) -> None:
    """The two flags, for ``--help`` (restart_if_requested has already acted on them)."""
    group = parser.add_mutually_exclusive_group()
    for flag, text in HELP.items():
        group.add_argument(flag, action="store_true", help=text)
