"""benchmarks/_allocator.py: the memory-bound benchmarks' --reuse-memory / --huge-pages restart."""
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
mode = _allocator.restart_if_requested()
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


def test_each_flag_restarts_once_with_its_environment(tmp_path):
    assert _probe(tmp_path) == ["None", "None", "None"]
    mode, tunables, thp = _probe(tmp_path, "--quick", "--reuse-memory")
    assert (mode, thp) == ("reuse-memory", "None")
    assert tunables == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
    assert _probe(tmp_path, "--huge-pages") == ["huge-pages", "None", "1"]
    # tunables the user set already are kept (ours replace theirs of the same name), and it restarts once
    _, tunables, _ = _probe(tmp_path, "--reuse-memory",
                            tunables="glibc.malloc.mmap_max=5:glibc.malloc.arena_max=2")
    assert tunables == "glibc.malloc.arena_max=2:" + _allocator.MODES["--reuse-memory"]["GLIBC_TUNABLES"]


def test_both_flags_are_refused():
    with pytest.raises(SystemExit, match="not both"):
        _allocator.requested(["--huge-pages", "--quick", "--reuse-memory"])
    assert _allocator.requested(["--quick"]) is None
