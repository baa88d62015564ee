"""Ctrl-C (SIGINT) and ``kill`` (SIGTERM) stop a run cleanly instead of losing it.

Inside ``with StopRequest() as stop:`` the first SIGINT or SIGTERM only sets ``stop.requested`` (the
signal's name); the training loop checks it after every step, finishes that step, writes a checkpoint
atomically and raises :class:`Interrupted`, whose message is the one line to print: where it stopped and
the command that resumes it. The command line turns it into exit status 128 + the signal (130 for
Ctrl-C), without a traceback. A second signal, a second or more after the first, interrupts at once
(``KeyboardInterrupt``), for a run stuck in a long evaluation; one sooner is the same Ctrl-C arriving
twice (under torchrun the terminal signals every process and the launcher forwards it again) and is
ignored. The previous handlers are restored on leaving the ``with``.

Handlers can only be installed from the main thread; a run started elsewhere keeps the usual behaviour.
DataLoader worker processes forked inside the ``with`` inherit the handler and ignore the signal there:
the main process decides when to stop and shuts them down.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
import time

REPEAT_SECONDS = 1.0  # a second signal sooner than this after the first is the same Ctrl-C, delivered twice


class Interrupted(Exception):
    """A run stopped on a signal after saving its checkpoint; ``str(e)`` says where and how to resume."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.exit_status = 128 + int(getattr(signal, signal_name, signal.SIGINT))


class StopRequest:
    """The first SIGINT / SIGTERM becomes ``self.requested`` (e.g. ``"SIGINT"``); a second one interrupts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._first = 0.0
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopRequest":
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process stops the run
        if self.requested is not None:
            if time.monotonic() - self._first >= REPEAT_SECONDS:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            return
        self.requested, self._first = signal.Signals(signum).name, time.monotonic()


def resume_command(argv: list[str] | None, verb: str, out: str) -> str:
    """The command line that continues a run: the original one without ``--overwrite``, with ``--resume``.

    ``argv`` is the command line after ``minibert`` (``["pretrain", "--steps", "100", ...]``), when known.
    """
    if argv is None:
        return f"minibert {verb} --out {shlex.quote(out)} --resume  (with the run's other options)"
    words = [w for w in argv if w != "--overwrite"]
    if not any(w == "--out" or w.startswith("--out=") for w in words):
        words += ["--out", out]
    if "--resume" not in words:
        words.append("--resume")
    return "minibert " + shlex.join(words)
