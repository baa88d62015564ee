"""Every crafted checkpoint folder of ``checkpoint_fuzz.py`` through every loader, in the test suite.

Each (folder, loader) pair must end ``loaded`` (a valid folder, finite outputs) or ``clear_error`` (a broken
one refused with ValueError/OSError naming the field at fault); see the harness's docstring for the other
outcomes. About 90 folders x 6 loaders run in worker subprocesses capped at 6 GB of address space: about
15 s on two busy cores.
"""
import checkpoint_fuzz


def test_every_crafted_checkpoint_loads_or_is_refused_clearly():
    report = checkpoint_fuzz.fuzz()
    ran = sum(sum(counts.values()) for counts in report["counts"].values())
    assert ran == report["cases"] * len(checkpoint_fuzz.LOADERS)
    failures = [f"[{f['loader']}] {f['case']}: {f['outcome']}: {f['message'][:300]}" for f in report["failures"]]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
