"""A seeded slice of the op fuzzer (``tests/fuzz/ops_fuzz.py``) in the test suite.

Every public op of ``minibert.ops`` gets 200 generated calls (1,000 in all, a new worker process every
400 calls), and every outcome must be a correct result or a clear error that names the argument at fault:
no crash, no silent wrong answer, no NaN where the answer is defined. The full run (``--calls-per-op
1000``, other seeds) is one command, in the README's Reliability section.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_fuzz  # noqa: E402

CALLS_PER_OP = 1000 if os.environ.get("MINIBERT_FUZZ") == "full" else 200


@pytest.mark.slow
def test_public_ops_never_crash_or_answer_wrongly():
    report = ops_fuzz.fuzz(CALLS_PER_OP, seed=2024)
    print("\nop fuzz:", report["counts"])
    assert sum(sum(c.values()) for c in report["counts"].values()) == CALLS_PER_OP * len(ops_fuzz.OPS)
    for op, counts in report["counts"].items():
        assert counts.get("ok", 0) > CALLS_PER_OP // 3, f"{op}: too few valid calls ran ({counts})"
        assert counts.get("clear_error", 0) > CALLS_PER_OP // 10, f"{op}: too few broken calls ({counts})"
    lines = [f"{f['outcome']}: {f['message']}\n    {f['spec']}" for f in report["failures"][:10]]
    assert not report["failures"], f"{len(report['failures'])} failing calls, e.g.\n" + "\n".join(lines)
