"""Running a student's code in a process of its own, so that nothing it does can reach the grader.

The grader never imports a student's file. A :class:`Sandbox` starts one child process per submission
(forked from a clean "forkserver" that has numpy and minibert imported, so a start costs milliseconds),
and asks it to import the student's files and call their functions. The grader has already computed the
reference outputs, in its own process, before it sends the inputs; it compares what comes back, so a
student who replaces a library function or the gradient checker only changes the child's copy.

What crosses the pipe:

* grader -> child: ordinary pickles (the grader's own data: arrays, lists, ``random.Random`` objects,
  minibert objects such as an optimizer, rebuilt in the child from the class and its attributes);
* child -> grader: only plain data (arrays, numbers, strings, lists, tuples, dicts; an object becomes a
  dict of its attributes), read back with an unpickler that refuses every other class, so a crafted
  reply cannot run code in the grader.

Limits: each function has a time budget (the grader stops waiting and kills the child, which is restarted
for the next function) and the child has an address-space limit (``resource.RLIMIT_AS``), so a runaway
allocation is a ``MemoryError`` in the student's code rather than a dead machine.
"""
from __future__ import annotations

import copy
import inspect
import io
import multiprocessing
import os
import pickle
import resource
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np

DEFAULT_MEMORY_LIMIT_MB = 4096
# Imported once by the forkserver, so that a child starts with them loaded.
PRELOAD = ["numpy", "minibert.assignments.sandbox", "minibert.reference.layers", "minibert.reference.blocks",
           "minibert.reference.losses", "minibert.reference.optim", "minibert.reference.schedules",
           "minibert.data.masking", "minibert.data.instances"]


class StudentFailure(Exception):
    """The student's code did not return a value. ``kind``: "error" (it raised), "not implemented",
    "timeout", "crashed" (the process died) or "missing" (the file or function is absent or does not
    import); ``error_types``: the names of the raised exception's classes, most specific first."""

    def __init__(self, kind: str, message: str, error_types: tuple = ()):
        super().__init__(message)
        self.kind = kind
        self.error_types = tuple(error_types)


# ---- the child ----------------------------------------------------------------------------------------

def _plain(x, seen=None):
    """``x`` as plain data: arrays, numbers, strings, containers; any other object becomes a dict of its
    attributes with its class name under "__object__" (functions, generators etc. just the name)."""
    seen = set() if seen is None else seen
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return x
    if isinstance(x, np.ndarray):
        return _plain(x.tolist(), seen) if x.dtype.hasobject else np.array(x)
    if isinstance(x, np.generic):
        return x.item() if x.dtype.hasobject else x
    if id(x) in seen:
        return {"__object__": type(x).__name__, "__cycle__": True}
    seen = seen | {id(x)}
    if isinstance(x, (list, tuple, set, frozenset)):
        return type(x)(_plain(e, seen) for e in x) if type(x) in (list, tuple, set, frozenset) \
            else [_plain(e, seen) for e in x]
    if isinstance(x, dict):
        return {_plain(k, seen): _plain(v, seen) for k, v in x.items()}
    state = getattr(x, "__dict__", None)
    out = {"__object__": type(x).__name__}
    if isinstance(state, dict) and not isinstance(x, (types.FunctionType, types.ModuleType, type)):
        out.update({k: _plain(v, seen) for k, v in state.items() if not callable(v)})
    return out


def _same(a, b) -> bool:
    """Deep equality that treats NaN as equal to NaN and compares objects by their attributes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if hasattr(a, "getstate") and callable(a.getstate):  # random.Random
        return a.getstate() == b.getstate()
    if hasattr(a, "__dict__") and not isinstance(a, (types.FunctionType, types.ModuleType, type)):
        return _same(vars(a), vars(b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- an odd __eq__ counts as a change
        return False


def _where(exc: BaseException, folder: Path) -> str:
    """`` (at file.py:line)`` for the deepest frame in the student's folder, or ""."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).parent == folder]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _describe(exc: BaseException, folder: Path, memory_limit_mb: int) -> tuple:
    """(kind, message, error types) for an exception raised by the student's code."""
    names = tuple(c.__name__ for c in type(exc).__mro__)
    if isinstance(exc, NotImplementedError):
        text = f": {exc}" if str(exc) else ""
        return "not implemented", f"raises NotImplementedError{text}{_where(exc, folder)}", names
    message = f"{type(exc).__name__}: {exc}{_where(exc, folder)}"
    if isinstance(exc, MemoryError):
        message += f" (the memory limit is {memory_limit_mb} MB)"
    return "error", message, names


def _import_file(path: Path):
    """Import ``path`` as a module with a unique name (never one of minibert's own)."""
    import importlib.util

    name = f"_minibert_student_{path.stem}_{os.getpid()}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their class's module up here
    spec.loader.exec_module(module)
    return module


def _resolve(module, qualified_name: str):
    """The object ``Class.method`` or ``function`` in ``module`` (AttributeError when absent)."""
    obj = module
    for part in qualified_name.split("."):
        obj = getattr(obj, part)
    return obj  # a method: the plain function; a classmethod: bound to the student's class


def _rebuild(module: str, qualname: str, state: dict):
    """An object of class ``module.qualname`` with attributes ``state`` (used to send minibert objects)."""
    import importlib

    cls = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _child_main(conn, folder: str, memory_limit_mb: int, loaders: dict) -> None:
    """The child's loop: answer "load" and "call" requests until the pipe closes."""
    folder = Path(folder)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # a student's print() must not reach the grader's terminal
    os.dup2(devnull, 2)
    if memory_limit_mb:
        limit = memory_limit_mb * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != folder.resolve()]
    modules = {}
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            if request[0] == "load":
                reply = _load(request[1], folder, modules, loaders, memory_limit_mb)
            else:  # a batch of calls, answered together; the first failure ends it
                filename, function, driver, calls, in_place = request[1:]
                results, changes = [], []
                for args, kwargs in calls:
                    reply = _call(filename, function, driver, args, kwargs, in_place, folder=folder,
                                  modules=modules, memory_limit_mb=memory_limit_mb)
                    if reply[0] == "failed":
                        break
                    results.append(reply[1])
                    changes.append(reply[2])
                else:
                    reply = ("ok", results, changes)
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 -- report anything, even an unpicklable result
            data = pickle.dumps(("failed", "error", f"{type(exc).__name__}: {exc}", ()))
        conn.send_bytes(data)


def _load(filename: str, folder: Path, modules: dict, loaders: dict, memory_limit_mb: int):
    if filename in modules:
        return ("ok",)
    path = folder / filename
    if not path.is_file():
        return ("failed", "missing", f"{filename} is missing from the student folder", ())
    try:
        loader = loaders.get(Path(filename).suffix)
        if loader:
            import importlib

            module_name, function_name = loader.split(":")
            modules[filename] = getattr(importlib.import_module(module_name), function_name)(path)
        else:
            modules[filename] = _import_file(path)
    except BaseException as exc:  # noqa: BLE001 -- a SyntaxError or a crash at import
        kind, message, names = _describe(exc, folder, memory_limit_mb)
        return ("failed", "missing" if kind == "error" else kind, f"importing {filename} failed: {message}", names)
    return ("ok",)


def _call(filename, function, driver, args, kwargs, in_place, *, folder, modules, memory_limit_mb):
    """Call the student's ``function`` of ``filename`` (or ``driver(student, ...)``, a function of the
    grader run here with the student's function or module). Returns ("ok", result, changed), where
    ``changed`` maps each argument the call modified to its new value (plain data, only for the names in
    ``in_place``; None for the others), or ("failed", kind, message, error types)."""
    import importlib

    module = modules[filename]
    try:
        target = _resolve(module, function) if function else module
    except AttributeError:
        return ("failed", "missing", f"{filename} has no {function}", ())
    if driver:
        module_name, function_name = driver.split(":")
        call, call_args = getattr(importlib.import_module(module_name), function_name), (target, *args)
    else:
        call, call_args = target, args
    try:
        bound = inspect.signature(target).bind(*args, **kwargs).arguments if not driver else {}
    except (TypeError, ValueError):
        bound = {}
    before = {name: copy.deepcopy(value) for name, value in bound.items()}
    with np.errstate(all="ignore"):  # an overflow shows up as inf or NaN in the result, where it is judged
        try:
            result = call(*call_args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 -- everything the student's code raises is reported
            return ("failed", *_describe(exc, folder, memory_limit_mb))
    changed = {name: (_plain(bound[name]) if name in in_place else None)
               for name in bound if not _same(before[name], bound[name])}
    return ("ok", _plain(result), changed)


# ---- the grader's side --------------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    """Reads the child's replies: plain data and NumPy arrays of numbers only."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}

    def find_class(self, module, name):
        if (module, name) == ("numpy", "dtype"):
            return _numeric_dtype
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the student's process sent a {module}.{name}, which the grader refuses")


def _numeric_dtype(*args):
    """numpy.dtype, refusing object dtypes (whose arrays would hold arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("the student's process sent an object array, which the grader refuses")
    return dtype


class _Pickler(pickle.Pickler):
    """Sends minibert objects as (class, attributes), dropping attributes that are functions: a grader's
    optimizer whose method was swapped for a call into the sandbox arrives as the plain optimizer."""

    def reducer_override(self, obj):
        cls = type(obj)
        if cls.__module__.startswith("minibert.") and hasattr(obj, "__dict__") and not isinstance(obj, type):
            while "<locals>" in cls.__qualname__:
                cls = cls.__mro__[1]
            state = {k: v for k, v in vars(obj).items() if not callable(v)}
            return _rebuild, (cls.__module__, cls.__qualname__, state)
        return NotImplemented


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def write_back(original, new) -> None:
    """Copy ``new`` (plain data from the child) into ``original`` in place: arrays element by element,
    lists and dicts entry by entry, objects attribute by attribute."""
    if isinstance(original, np.ndarray):
        new = np.asarray(new)
        if new.shape == original.shape:
            np.copyto(original, new, casting="unsafe")
    elif isinstance(original, list):
        original[:] = new if isinstance(new, list) else list(new)
    elif isinstance(original, dict) and isinstance(new, dict):
        for key in [k for k in original if k not in new]:
            del original[key]
        for key, value in new.items():
            if key in original and isinstance(original[key], (np.ndarray, list, dict)) and \
                    type(value) is type(original[key]):
                write_back(original[key], value)
            else:
                original[key] = value
    elif hasattr(original, "__dict__") and isinstance(new, dict):
        for key, value in new.items():
            current = getattr(original, key, None)
            if key == "__object__":
                continue
            if isinstance(current, (np.ndarray, list, dict)) and type(value) is type(current):
                write_back(current, value)
            else:
                setattr(original, key, value)


def as_namespace(x):
    """A child's object (a dict with "__object__") as a SimpleNamespace, recursively, for attribute access."""
    if isinstance(x, dict):
        converted = {k: as_namespace(v) for k, v in x.items()}
        return types.SimpleNamespace(**converted) if "__object__" in x else converted
    if isinstance(x, (list, tuple)):
        return type(x)(as_namespace(e) for e in x)
    return x


_CONTEXT = None


def _context():
    """The forkserver context, started on first use with ``PRELOAD`` imported."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


class Sandbox:
    """The child process that runs one submission's code. Use as a context manager.

    ``loaders`` maps a file suffix (".cpp") to "module:function" run in the child to load such a file
    (the default is an import by path). ``memory_limit_mb``: the child's address-space limit (0: none).
    """

    def __init__(self, folder, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB, loaders: dict | None = None):
        self.folder = str(Path(folder).resolve())
        self.memory_limit_mb = memory_limit_mb
        self.loaders = dict(loaders or {})
        self._process = self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the child (it is started again by the next request)."""
        if self._process is not None:
            self._conn.close()
            self._process.join(timeout=2.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = self._conn = None

    def _start(self) -> None:
        if self._process is None:
            context = _context()
            parent_end, child_end = context.Pipe()
            self._process = context.Process(target=_child_main, daemon=True,
                                            args=(child_end, self.folder, self.memory_limit_mb, self.loaders))
            self._process.start()
            child_end.close()
            self._conn = parent_end

    def _request(self, request, deadline: float):
        """Send ``request``; return the reply, or raise StudentFailure on timeout or a dead child."""
        self._start()
        self._conn.send_bytes(_dumps(request))
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            self._process.kill()
            self.close()
            raise StudentFailure("timeout", "still running when the time limit ran out (an endless loop?)")
        try:
            reply = _SafeUnpickler(io.BytesIO(self._conn.recv_bytes())).load()
        except EOFError:
            self._process.join()
            code = self._process.exitcode
            self.close()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise StudentFailure("crashed", f"the process running your code died ({how}); a crash in native "
                                 f"code, os._exit(), or running out of memory") from None
        except pickle.UnpicklingError as exc:
            self.close()
            raise StudentFailure("error", str(exc)) from None
        if reply[0] == "failed":
            raise StudentFailure(*reply[1:])
        return reply

    def load(self, filename: str, deadline: float) -> None:
        """Import (or build) the student's ``filename``; StudentFailure("missing", ...) when it cannot."""
        self._request(("load", filename), deadline)

    def call(self, filename: str, function: str | None, calls: list, deadline: float, in_place=(),
             driver: str | None = None):
        """Run the student's ``function`` (or ``driver(module, *args)``) in the child on each (args, kwargs)
        of ``calls``, in one round trip.

        Returns (results, changes): for each call what it returned, and which arguments it modified, with
        their new values for the names in ``in_place`` (which the caller may copy back with
        :func:`write_back`). Raises StudentFailure when the code raises, times out or crashes.
        """
        self.load(filename, deadline)
        _, results, changes = self._request(("call", filename, function, driver, list(calls), tuple(in_place)),
                                            deadline)
        return results, changes
