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
from collections.abc import Callable, Iterator

import numba
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
    (all cores by default); ``ETARETRIEVAL_SERIAL=1`` makes every call serial.
    Results never depend on the number of threads.

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
    """Threads a call made now by this thread may use (see :func:`threads`)."""
    count = getattr(_local, "threads", None)
    if count is not None:
        return int(count)
    return _numba_threads() if PARALLEL else 1


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
    """In a forked child: the parent's helper threads do not exist here; start anew on demand."""
    global _pool
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_pool)


def parallel_rows(run: Callable[[int, int], None], rows: int, work: int) -> None:
    """Call ``run(lo, hi)`` over consecutive ranges that cover ``range(rows)``, on up to :func:`thread_count` threads.

    ``work`` (about ``B x L x W``) below :data:`config.SERIAL_WORK` per
    thread gives fewer threads, down to one call ``run(0, rows)`` in the
    calling thread. Otherwise the rows are split into up to
    ``TASKS_PER_THREAD`` tasks per thread, which the calling thread and the
    pool's helpers take in turn; the call returns when every task is done
    and re-raises the first exception of a task.
    """
    count = min(thread_count(), rows, work // max(1, config.SERIAL_WORK))
    if count <= 1:
        run(0, rows)
        return
    ntasks = min(rows, count * config.TASKS_PER_THREAD)
    bounds = [rows * i // ntasks for i in range(ntasks + 1)]
    tasks = iter(range(ntasks))
    state = {"left": ntasks}
    errors: list[BaseException] = []
    lock = threading.Lock()
    finished = threading.Lock()
    finished.acquire()

    def drain() -> None:
        while True:
            with lock:
                task = next(tasks, None)
            if task is None:
                return
            try:
                if not errors:
                    run(bounds[task], bounds[task + 1])
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)
            finally:
                with lock:
                    state["left"] -= 1
                    if state["left"] == 0:
                        finished.release()

    _pool.submit(drain, count - 1)
    drain()
    finished.acquire()  # helpers still queued behind other callers' work find no task left and return
    if errors:
        raise errors[0]
