"""benchmarks/_allocator.py: the memory-bound benchmarks' restart in their allocator mode (--reuse-memory by
default, --fresh-pages, --huge-pages)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _allocator  # noqa: E402

PROBE = """
import os, sys
sys.path.insert(0, {benchmarks!r})
import _allocator
mode = _allocator.restart_in_mode()
print(mode, os.environ.get("GLIBC_TUNABLES"), os.environ.get("THP_MEM_ALLOC_ENABLE"))
"""


def _probe(tmp_path, *flags, tunables=None):
    """Run a script that restarts like the benchmarks do; what it saw after the restart."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(benchmarks=str(BENCHMARKS)))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, str(script), *flags], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_each_mode_restarts_once_with_its_environment(tmp_path):
    reuse = _allocator.MODES["--reuse-memory"]["GLIBC_TUNABLES"]
    assert reuse == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
    assert _probe(tmp_path) == ["reuse-memory", reuse, "None"]  # the default
    assert _probe(tmp_path, "--quick", "--reuse-memory") == ["reuse-memory", reuse, "None"]
    assert _probe(tmp_path, "--fresh-pages") == ["fresh-pages", "None", "None"]
    assert _probe(tmp_path, "--huge-pages") == ["huge-pages", "None", "1"]
    # tunables the user set already are kept (ours replace theirs of the same name), and it restarts once
    _, tunables, _ = _probe(tmp_path, tunables="glibc.malloc.mmap_max=5:glibc.malloc.arena_max=2")
    assert tunables == "glibc.malloc.arena_max=2:" + reuse
    # --fresh-pages leaves the user's tunables alone
    assert _probe(tmp_path, "--fresh-pages", tunables="glibc.malloc.arena_max=2")[1] == "glibc.malloc.arena_max=2"


def test_two_modes_are_refused_and_results_are_named_by_mode():
    with pytest.raises(SystemExit, match="not more"):
        _allocator.requested(["--huge-pages", "--quick", "--fresh-pages"])
    assert _allocator.requested(["--quick"]) == "--reuse-memory"
    assert _allocator.result_name("gelu", "reuse-memory") == "gelu"
    assert _allocator.result_name("gelu", "fresh-pages") == "gelu-fresh-pages"
