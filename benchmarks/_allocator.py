"""Where the memory-bound benchmarks' outputs live: ``--reuse-memory`` (the default), ``--fresh-pages``,
``--huge-pages``.

Every op in ``gelu.py`` and ``layernorm.py`` allocates its output, as it would in a model. How much that
costs depends on the allocator, not on the kernel. glibc serves an allocation of more than 32 MB (16M
float32 elements is 64 MB) with a fresh ``mmap`` and returns it to the kernel on free, so every call gets
fresh pages: the first write to each 4 KB page faults into the kernel, which zeroes it. At 16M elements
that costs several times the arithmetic, the same for every op that allocates (``clone()`` included), and
it varies from run to run. Smaller allocations, such as every activation of the pretraining default
model, come from glibc's heap, where a freed block is handed to the next allocation already mapped.

So the benchmarks choose, and say in their results, where the memory comes from. Each mode must be in the
environment before the process starts (glibc reads its tunables at start-up, torch its switch at the
allocator's first use), so the script restarts itself with it:

* ``--reuse-memory``, the default: glibc's tunables ``glibc.malloc.mmap_max=0`` (never ``mmap`` an
  allocation: take it from the heap) and a trim threshold of 64 GB (never give freed heap memory back), so
  a freed output is handed to the next call already mapped at every size, as it is below 32 MB anyway and
  as a caching allocator (jemalloc, tcmalloc, or torch's on a GPU) does. This is the steady state of a
  training loop, and it measures the kernels: the ceiling they are compared with, a copy into a buffer
  that is already mapped, has no page faults either;
* ``--fresh-pages``: the allocator as the process started, so 64 MB outputs are fresh pages: what an
  allocating op costs the first time, or every time above 32 MB;
* ``--huge-pages``: fresh pages, but torch's own ``THP_MEM_ALLOC_ENABLE=1`` aligns allocations of 2 MB and
  more for transparent huge pages, 512 times fewer faults (the kernel still zeroes every page).

This module imports nothing heavy: a benchmark calls :func:`restart_in_mode` first thing.
"""
from __future__ import annotations

import os
import sys

DEFAULT = "--reuse-memory"
MODES = {
    "--reuse-memory": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"},
    "--fresh-pages": {},
    "--huge-pages": {"THP_MEM_ALLOC_ENABLE": "1"},
}
HELP = {
    "--reuse-memory": "the default: freed outputs are reused, already mapped (glibc tunables; see "
                      "benchmarks/_allocator.py)",
    "--fresh-pages": "outputs of 32 MB and more in fresh pages, as glibc gives them by default (page faults)",
    "--huge-pages": "fresh pages, aligned for transparent huge pages (THP_MEM_ALLOC_ENABLE=1)",
}


def requested(argv: list[str]) -> str:
    """The allocator flag among ``argv`` (at most one), or the default's."""
    flags = [a for a in argv if a in MODES]
    if len(flags) > 1:
        raise SystemExit(f"choose one of {', '.join(MODES)}, not more")
    return flags[0] if flags else DEFAULT


def merged(key: str, value: str, current: str | None) -> str:
    """``key``'s value with the mode's ``value`` in it. GLIBC_TUNABLES is a ``:``-separated list: tunables the
    user set already are kept, and ours take their place when they name the same tunable."""
    if key != "GLIBC_TUNABLES" or not current:
        return value
    ours = dict(item.split("=", 1) for item in value.split(":"))
    kept = [item for item in current.split(":") if item and item.split("=", 1)[0] not in ours]
    return ":".join(kept + [value])


def restart_in_mode() -> str:
    """Restart this script with its mode's environment if that is not set yet; returns the mode's name
    (``"reuse-memory"``, ``"fresh-pages"`` or ``"huge-pages"``)."""
    flag = requested(sys.argv[1:])
    env = {k: merged(k, v, os.environ.get(k)) for k, v in MODES[flag].items()}
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return flag[2:]


def result_name(benchmark: str, mode: str) -> str:
    """The results' file name: ``benchmark`` for the default mode, ``benchmark-<mode>`` for the others."""
    return benchmark if mode == DEFAULT[2:] else f"{benchmark}-{mode}"


def add_arguments(parser) -> None:
    """The flags, for ``--help`` (restart_in_mode has already acted on them)."""
    group = parser.add_mutually_exclusive_group()
    for flag, text in HELP.items():
        group.add_argument(flag, action="store_true", help=text)
