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
made by ``fork`` gets new locks and starts a fresh pool on its first
parallel call (GNU OpenMP, Numba's default layer, kills such a child), and
any number of caller threads may run kernels at once. By default a call
uses the CPUs the process may use (affinity and cgroup quota), no more
than are idle (see :func:`threads`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel

from . import config
from ._jit import PARALLEL
from ._validate import _as_int

__all__ = ["threads", "thread_count", "cpu_limit", "cgroup_cpu_quota", "parallel_rows"]

_local = threading.local()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Bound the threads of every etaretrieval call made by this thread inside the block.

    Other threads are not affected, nor are NumPy's, torch's or Numba's own
    settings. Outside such a block a call uses Numba's setting where one was
    chosen (``numba.set_num_threads`` of the calling thread once Numba's
    pool has been started, or a ``NUMBA_NUM_THREADS`` other than Numba's
    default), otherwise the CPUs this process may use (its affinity and
    cgroup CPU quota, read once), but no more than its own plus
    the cores idle when it starts (the *idle-core rule*; Linux: the runnable
    threads of ``/proc/loadavg``, as GNU OpenMP's dynamic mode does, and at
    most the process's other CPUs): on a busy machine a helper would wait
    for a core, and the call for it. ``ETARETRIEVAL_SERIAL=1`` makes every
    call serial. Results never depend on the number of threads.

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


def _numba_threads() -> int | None:
    """Numba's thread count for the calling thread where someone chose it, else ``None``; starts no Numba pool.

    Chosen: ``NUMBA_NUM_THREADS`` other than Numba's default (the cores of
    the process's affinity), or ``numba.set_num_threads`` of the calling
    thread once the host has started Numba's pool.
    """
    numba_config: Any = numba.config
    config_count = int(numba_config.NUMBA_NUM_THREADS)
    count = config_count
    if getattr(_numba_parallel, "_is_initialized", False):  # started by the host: honour set_num_threads
        count = int(numba.get_num_threads())
    if count != config_count or config_count != numba_config.NUMBA_DEFAULT_NUM_THREADS:
        return count
    return None


def thread_count() -> int:
    """The most threads a call made now by this thread may use (see :func:`threads`).

    With the default count, a call on a busy machine takes fewer (the idle-core rule, see :func:`threads`).
    """
    count = getattr(_local, "threads", None)
    if count is not None:
        return int(count)
    if not PARALLEL:
        return 1
    chosen = _numba_threads()
    return cpu_limit() if chosen is None else chosen


#: Where :func:`cpu_limit` reads the process's cgroups (``cgroup``, ``mountinfo``) and the root that the
#: mount points are under: the tests point them at fake files.
_PROC_SELF = "/proc/self"
_ROOT = "/"
_cpus: list[int] = []  # cpu_limit(), once read in this process


def cpu_limit() -> int:
    """The CPUs this process may use: its affinity, bounded by the cgroup CPU quota; read once per process.

    ``len(os.sched_getaffinity(0))`` (``os.cpu_count()`` where there is no
    affinity), and no more than the tightest CFS quota of the process's
    cgroup and its ancestors (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up: a container
    limited to 2 CPUs on a 64-core node uses 2, not 64.
    """
    if not _cpus:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        quota = cgroup_cpu_quota(_PROC_SELF, _ROOT)
        _cpus.append(max(1, cores if quota is None else min(cores, quota)))
    return _cpus[0]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _quota_in(directory: str, version: int) -> int | None:
    """The CPUs of the quota set in one cgroup directory, rounded up; ``None``: none (or unreadable)."""
    if version == 2:
        fields = (_read(os.path.join(directory, "cpu.max")) or "").split()
    else:
        fields = [(_read(os.path.join(directory, name)) or "").strip()
                  for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    try:
        quota, period = int(fields[0]), int(fields[1])  # "max" (v2) and "" (no file) fail here: no quota
    except (ValueError, IndexError):
        return None
    if quota <= 0 or period <= 0:  # v1: -1 is no quota
        return None
    return -(-quota // period)


def _mounts(mountinfo: str) -> list[tuple[int, str, str]]:
    """``(cgroup version, root inside the hierarchy, mount point)`` of the cgroup2 and v1 ``cpu`` mounts."""
    found = []
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        left, right = fields.split(), rest.split()
        if len(left) < 5 or len(right) < 3:
            continue
        root, point = (f.encode().decode("unicode_escape") for f in left[3:5])  # octal escapes (\040: space)
        if right[0] == "cgroup2":
            found.append((2, root, point))
        elif right[0] == "cgroup" and "cpu" in right[2].split(","):
            found.append((1, root, point))
    return found


def cgroup_cpu_quota(proc_self: str = "/proc/self", root: str = "/") -> int | None:
    """The CPUs of the tightest CFS quota over this process's cgroups and their ancestors; ``None``: no quota.

    The process's cgroup paths come from ``proc_self/cgroup`` (``0::path``:
    v2; ``N:...cpu...:path``: v1), the hierarchies' mount points from
    ``proc_self/mountinfo``; each quota file is read from the process's
    cgroup directory up to the mount point. Without such mounts (or
    readable files), the usual ``/sys/fs/cgroup`` directories are read.
    ``root`` prefixes every path read there (``"/"`` on a live system).
    """
    paths: dict[int, str] = {}
    for line in (_read(os.path.join(proc_self, "cgroup")) or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and not parts[1]:
            paths[2] = parts[2]
        elif len(parts) == 3 and "cpu" in parts[1].split(","):
            paths[1] = parts[2]
    quotas: list[int] = []
    mounts = _mounts(_read(os.path.join(proc_self, "mountinfo")) or "")
    for version, mount_root, point in mounts:
        path = paths.get(version)
        if path is None:
            continue
        inside = os.path.relpath(path, mount_root) if (path + "/").startswith(mount_root.rstrip("/") + "/") else "."
        top = os.path.join(root, point.lstrip("/"))
        directory = os.path.normpath(os.path.join(top, inside))
        while True:  # a parent's quota bounds its children: the tightest on the way up counts
            quota = _quota_in(directory, version)
            if quota is not None:
                quotas.append(quota)
            if directory == os.path.normpath(top) or not directory.startswith(os.path.normpath(top)):
                break
            directory = os.path.dirname(directory)
    if not mounts:
        usual = os.path.join(root, "sys/fs/cgroup")
        for version, directory in [(2, usual), (1, os.path.join(usual, "cpu")),
                                   (1, os.path.join(usual, "cpu,cpuacct"))]:
            quota = _quota_in(directory, version)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


_loadavg: list[int] = []  # an open descriptor of /proc/loadavg, once read; [-1] where there is none
_loadavg_lock = threading.Lock()


def _idle_cores() -> int:
    """Cores that nothing else wants now, this thread's excluded: at most ``cpu_limit() - 1``.

    The machine's cores (``os.cpu_count()``) minus its runnable threads, this
    one included, from the fourth field of ``/proc/loadavg`` (runnable / all
    scheduling entities, read in about 2 microseconds): the file describes
    the whole machine, also inside a container, so a process that may use
    fewer CPUs (:func:`cpu_limit`) counts no more idle cores than its other
    CPUs. Without the file, ``cpu_limit() - 1``.
    """
    others = cpu_limit() - 1
    if not _loadavg:
        with _loadavg_lock:
            if not _loadavg:
                try:
                    _loadavg.append(os.open("/proc/loadavg", os.O_RDONLY))
                except OSError:
                    _loadavg.append(-1)
    if _loadavg[0] < 0:
        return others
    try:
        running = int(os.pread(_loadavg[0], 128, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return others
    return min(others, (os.cpu_count() or 1) - running)


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


def _after_fork_in_child() -> None:
    """In a forked child: renew every lock, the pool and the descriptor; only the forking thread lives on.

    A lock that another thread of the parent held at the fork stays held in
    the child forever, and the parent's helper threads do not exist there:
    the child gets new locks and an empty pool, started anew on demand. The
    inherited ``/proc/loadavg`` descriptor is closed (a child that closes its
    descriptors could reuse the number for another file) and the CPU limit is
    read again (a child may be moved to other CPUs): both on first use.
    """
    global _pool, _loadavg_lock
    _pool = _Pool()
    _loadavg_lock = threading.Lock()
    if _loadavg and _loadavg[0] >= 0:
        try:
            os.close(_loadavg[0])
        except OSError:
            pass
    _loadavg.clear()
    _cpus.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_rows(run: Callable[..., Any], rows: int, work: int, outputs: Sequence[np.ndarray] = ()) -> list[Any]:
    """Call ``run`` over consecutive ranges that cover ``range(rows)``, on up to :func:`thread_count` threads.

    ``work`` (about ``B x L x W``) below :data:`config.SERIAL_WORK` per
    thread gives fewer threads, down to one call in the calling thread, and
    so does a busy machine when the count is the default (see :func:`threads`).
    Otherwise the rows are split into up to ``TASKS_PER_THREAD`` tasks per
    thread, which the calling thread and the pool's helpers take in turn;
    the call returns when every task is done (none writes anything after
    that) and re-raises the first exception of a task; the tasks not yet
    started when a task fails are skipped.

    A task is ``run(lo, hi)``, or ``run(lo, hi, 0, *outputs)`` where
    ``outputs`` are given (the form of the top-K kernels, whose tasks write
    rows ``lo - base`` to ``hi - base`` of the arrays they are passed).

    Returns
    -------
    list
        ``run``'s return value per task, in row order.
    """
    if outputs:
        arrays = tuple(outputs)
        task: Callable[[int, int], Any] = lambda lo, hi: run(lo, hi, 0, *arrays)  # noqa: E731
    else:
        task = run
    count = min(rows, work // max(1, config.SERIAL_WORK))
    if count > 1:  # worth a helper: as many as the thread setting, and by default the idle cores, allow
        count = min(count, thread_count())
        if count > 1 and getattr(_local, "threads", None) is None:
            count = min(count, 1 + max(0, _idle_cores()))
    if count <= 1:
        return [task(0, rows)]
    ntasks = min(rows, count * config.TASKS_PER_THREAD)
    job = _Job(task, [rows * i // ntasks for i in range(ntasks + 1)])
    _pool.submit(job.drain, count - 1)
    job.drain()
    job.finished.acquire()  # the helpers' last tasks
    if job.errors:
        raise job.errors[0]
    return job.results


class _Job:
    """The tasks of one :func:`parallel_rows` call: taken in turn by the calling thread and the helpers."""

    def __init__(self, task: Callable[[int, int], Any], bounds: list[int]) -> None:
        self.task, self.bounds = task, bounds
        self.results: list[Any] = [None] * (len(bounds) - 1)
        self.errors: list[BaseException] = []
        self.next = 0  # the first task nobody has taken
        self.left = len(self.results)  # tasks not finished
        self.lock = threading.Lock()
        self.finished = threading.Lock()  # released when the last task finishes
        self.finished.acquire()

    def drain(self) -> None:
        """Take tasks until none is left; a failure is kept for the calling thread (a helper lives on)."""
        while True:
            with self.lock:
                task = self.next
                if task == len(self.results):
                    return
                self.next += 1
            if not self.errors:
                try:
                    self.results[task] = self.task(self.bounds[task], self.bounds[task + 1])
                except BaseException as exc:
                    self.errors.append(exc)
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.finished.release()
