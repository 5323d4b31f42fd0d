"""The library's threads: how many a call may use, and the pool that runs its row ranges.

The CPU kernels are serial Numba functions over a range of batch rows that
release the GIL. A call whose work (``B x L x W``) is below
:data:`etaretrieval.config.SERIAL_WORK`, or that may use one thread, runs in
the calling thread: no pool round trip. A larger call splits its rows into
tasks that the calling thread and up to ``threads - 1`` helper threads of a
small pool take in turn.

The pool is the library's own (plain Python threads, started on the first
call that needs them), not Numba's threading layer: importing starts no
thread, calls never change a setting of NumPy, torch or Numba, a child
made by ``fork`` starts a fresh pool on its first parallel call (GNU
OpenMP, Numba's default layer, kills such a child), and any number of caller
threads may run kernels at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel

from . import config
from ._jit import PARALLEL
from ._validate import _as_int

__all__ = ["threads", "thread_count", "parallel_rows"]

_local = threading.local()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Bound the threads of every etaretrieval call made by this thread inside the block.

    Other threads are not affected, nor are NumPy's, torch's or Numba's own
    settings. Outside such a block a call uses ``numba.get_num_threads()``
    of the calling thread when Numba's thread pool has been started (so
    ``numba.set_num_threads`` is honoured), otherwise ``NUMBA_NUM_THREADS``
    (all cores by default), but no more than its own plus the cores idle
    when it starts (the *idle-core rule*; Linux: the runnable threads of
    ``/proc/loadavg``, as GNU OpenMP's dynamic mode does): on a busy machine
    a helper would wait for a core, and the call for it.
    ``ETARETRIEVAL_SERIAL=1`` makes every call serial. Results never depend
    on the number of threads.

    Parameters
    ----------
    n : int
        Threads per call, ``>= 1`` (``1``: every call runs in the calling
        thread, the setting for a server that handles one request per thread).

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> table = np.arange(8, dtype=np.uint64).reshape(8, 1)
    >>> with er.threads(1):
    ...     er.topk_hamming_lookup(table[:1], np.array([3, 1, 0]), table, k=2)
    (array([[2, 1]]), array([[0, 1]], dtype=int32))
    """
    count = _as_int("n", n)
    if count < 1:
        raise ValueError(f"n must be >= 1, got {count}")
    previous = getattr(_local, "threads", None)
    _local.threads = count
    try:
        yield
    finally:
        _local.threads = previous


def _numba_threads() -> int:
    """Numba's thread count for the calling thread, without starting Numba's pool."""
    if getattr(_numba_parallel, "_is_initialized", False):  # started by the host: honour set_num_threads
        return int(numba.get_num_threads())
    return int(numba.config.NUMBA_NUM_THREADS)


def thread_count() -> int:
    """The most threads a call made now by this thread may use (see :func:`threads`).

    With the default count, a call on a busy machine takes fewer (the idle-core rule, see :func:`threads`).
    """
    count = getattr(_local, "threads", None)
    if count is not None:
        return int(count)
    return _numba_threads() if PARALLEL else 1


_loadavg: list[int] = []  # an open descriptor of /proc/loadavg, once read; [-1] where there is none
_loadavg_lock = threading.Lock()


def _idle_cores() -> int:
    """Cores that nothing else wants now: ``os.cpu_count()`` minus the runnable threads, this one included.

    From the fourth field of ``/proc/loadavg`` (runnable / all scheduling
    entities, read in about 2 microseconds); ``os.cpu_count()`` where it
    cannot be read.
    """
    cores = os.cpu_count() or 1
    if not _loadavg:
        with _loadavg_lock:
            if not _loadavg:
                try:
                    _loadavg.append(os.open("/proc/loadavg", os.O_RDONLY))
                except OSError:
                    _loadavg.append(-1)
    if _loadavg[0] < 0:
        return cores
    try:
        running = int(os.pread(_loadavg[0], 128, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    return cores - running


class _Pool:
    """Daemon helper threads taking jobs from one queue; started on demand, never shrunk."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.size = 0
        self.lock = threading.Lock()

    def submit(self, job: Callable[[], None], helpers: int) -> None:
        """Queue ``job`` ``helpers`` times, after starting helper threads up to ``helpers``."""
        if self.size < helpers:
            with self.lock:
                while self.size < helpers:
                    threading.Thread(target=self._work, name=f"etaretrieval-{self.size}", daemon=True).start()
                    self.size += 1
        for _ in range(helpers):
            self.jobs.put(job)

    def _work(self) -> None:
        while True:
            self.jobs.get()()


_pool = _Pool()


def _fresh_pool() -> None:
    """In a forked child: the parent's helper threads do not exist here; start anew on demand.

    The inherited ``/proc/loadavg`` descriptor is closed too (a child that
    closes its descriptors could reuse the number for another file): the
    child opens its own on first use.
    """
    global _pool
    _pool = _Pool()
    if _loadavg and _loadavg[0] >= 0:
        try:
            os.close(_loadavg[0])
        except OSError:
            pass
    _loadavg.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_pool)


def parallel_rows(run: Callable[..., Any], rows: int, work: int, outputs: Sequence[np.ndarray] = ()) -> list[Any]:
    """Call ``run`` over consecutive ranges that cover ``range(rows)``, on up to :func:`thread_count` threads.

    ``work`` (about ``B x L x W``) below :data:`config.SERIAL_WORK` per
    thread gives fewer threads, down to one call in the calling thread, and
    so does a busy machine when the count is the default (see :func:`threads`).
    Otherwise the rows are split into up to ``TASKS_PER_THREAD`` tasks per
    thread, which the calling thread and the pool's helpers take in turn;
    the call returns when every task is done and re-raises the first
    exception of a task.

    Without ``outputs``, a task is ``run(lo, hi)`` and writes its results
    wherever ``run`` does: the call waits for every task, also one a helper
    thread holds while the scheduler has preempted it (milliseconds on a
    busy machine). With ``outputs`` (arrays whose first axis is the rows, and
    all that ``run`` writes), a task is ``run(lo, hi, base, *outs)``: row
    ``r`` of ``outs`` is row ``base + r`` of ``outputs``. The calling thread
    writes into ``outputs`` (``base = 0``), a helper into arrays of its own
    that it copies in when it is done. Once no task is left to take, the
    calling thread waits twice as long as its longest task took for the
    helpers' tasks, then takes over those still running (it computes them
    itself and the late helper's copy is dropped): a preempted helper costs
    the call about three tasks' time, and never writes into ``outputs`` after
    the call has returned.

    Returns
    -------
    list
        ``run``'s return value per task, in row order.
    """
    count = min(rows, work // max(1, config.SERIAL_WORK))
    if count > 1:  # worth a helper: as many as the thread setting, and by default the idle cores, allow
        count = min(count, thread_count())
        if count > 1 and getattr(_local, "threads", None) is None:
            count = min(count, 1 + max(0, _idle_cores()))
    if count <= 1:
        return [run(0, rows, 0, *outputs) if outputs else run(0, rows)]
    ntasks = min(rows, count * config.TASKS_PER_THREAD)
    bounds = [rows * i // ntasks for i in range(ntasks + 1)]
    job = _Job(run, bounds, tuple(outputs))
    _pool.submit(lambda: job.drain(helper=True), count - 1)
    job.drain(helper=False)
    job.finish()
    if job.errors:
        raise job.errors[0]
    return job.results


_FREE, _RUNNING, _DONE, _TAKEN = 0, 1, 2, 3  # _TAKEN: over by the calling thread

#: Added to twice the calling thread's longest task: its wait for a helper's task before taking it over,
#: seconds. A helper's task may cost more than the caller's (longer rows) and is then done twice, at
#: worst; a preempted helper stalls for a time slice (milliseconds).
_MIN_WAIT = 50e-6


class _Job:
    """The tasks of one :func:`parallel_rows` call, their states and results."""

    def __init__(self, run: Callable[..., Any], bounds: list[int], outputs: tuple[np.ndarray, ...]) -> None:
        self.run, self.bounds, self.outputs = run, bounds, outputs
        ntasks = len(bounds) - 1
        self.state = [_FREE] * ntasks
        self.results: list[Any] = [None] * ntasks
        self.errors: list[BaseException] = []
        self.next = 0  # the first task nobody has taken
        self.left = ntasks
        self.lock = threading.Lock()
        self.finished = threading.Lock()
        self.finished.acquire()
        self.own_time = 0.0  # the calling thread's longest task, seconds

    def _call(self, task: int, private: bool) -> tuple[Any, BaseException | None, tuple[np.ndarray, ...] | None]:
        """Run a task: ``(value, error, the helper's own rows or None)``; skipped once another task failed."""
        lo, hi = self.bounds[task], self.bounds[task + 1]
        if self.errors:
            return None, None, None
        try:  # whatever fails (the private arrays too) is re-raised in the calling thread, not in a helper
            outs = self.outputs
            if private:
                outs = tuple(np.empty((hi - lo, *o.shape[1:]), dtype=o.dtype) for o in outs)
            value = self.run(lo, hi, lo if private else 0, *outs) if self.outputs else self.run(lo, hi)
            return value, None, outs if private else None
        except BaseException as exc:
            return None, exc, None

    def _done(self, task: int, value: Any, error: BaseException | None, own: tuple[np.ndarray, ...] | None,
              held: int = _RUNNING) -> None:
        """Record a task's outcome, if the task is still in state ``held`` (a late helper's is not: dropped).

        ``own``: a helper's rows of the task, copied into the outputs.
        """
        with self.lock:
            if self.state[task] != held:
                return
            if own is not None:
                lo, hi = self.bounds[task], self.bounds[task + 1]
                for out, rows in zip(self.outputs, own):
                    out[lo:hi] = rows
            self.results[task] = value
            if error is not None:
                self.errors.append(error)
            self.state[task] = _DONE
            self.left -= 1
            if self.left == 0:
                self.finished.release()

    def drain(self, helper: bool) -> None:
        """Take free tasks until none is left."""
        private = helper and bool(self.outputs)
        while True:
            with self.lock:
                task = self.next
                if task == len(self.state):
                    return
                self.next += 1
                self.state[task] = _RUNNING
            start = time.perf_counter()
            value, error, own = self._call(task, private)
            if not helper:
                self.own_time = max(self.own_time, time.perf_counter() - start)
            self._done(task, value, error, own)

    def finish(self) -> None:
        """In the calling thread, with no free task left: wait for the helpers' tasks, or take them over."""
        if self.outputs and not self.finished.acquire(timeout=2 * self.own_time + _MIN_WAIT):
            with self.lock:  # still running after a task's time: the helper is late, most likely preempted
                late = [t for t, state in enumerate(self.state) if state == _RUNNING]
                for task in late:
                    self.state[task] = _TAKEN
            for task in late:
                value, error, _ = self._call(task, private=False)
                self._done(task, value, error, None, held=_TAKEN)
        if not self.outputs or self.left:  # without outputs, or tasks still to finish: wait for them
            self.finished.acquire()
