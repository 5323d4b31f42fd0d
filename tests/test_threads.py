"""Threads under the caller's control: ``etaretrieval.threads``, the serial path, concurrent callers, host settings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etaretrieval as er
from etaretrieval import _threads, config


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_threads_rejects_bad_counts(bad: object, error: type) -> None:
    with pytest.raises(error, match="n must be"):
        with er.threads(bad):  # type: ignore[arg-type]
            pass


def _in_new_thread() -> int:
    """The thread count a freshly started thread sees."""
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(_threads.thread_count()))
    worker.start()
    worker.join()
    return seen[0]


def test_threads_nest_restore_and_stay_in_their_thread() -> None:
    default = _threads.thread_count()
    fresh = _in_new_thread()  # may differ from this thread's (numba.set_num_threads is per thread)
    with er.threads(3):
        assert _threads.thread_count() == 3
        with er.threads(1):
            assert _threads.thread_count() == 1
            seen = _in_new_thread()
        assert _threads.thread_count() == 3
    assert _threads.thread_count() == default
    assert seen == fresh  # another thread keeps its own setting
    with pytest.raises(RuntimeError), er.threads(2):
        raise RuntimeError
    assert _threads.thread_count() == default


@settings(deadline=None, max_examples=60)
@given(rows=st.integers(0, 70), work=st.integers(0, 10**6), serial_work=st.integers(0, 10**5),
       n=st.integers(1, 5), tasks=st.integers(1, 6))
def test_parallel_rows_covers_every_row_once(rows: int, work: int, serial_work: int, n: int, tasks: int) -> None:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def run(lo: int, hi: int) -> None:
        with lock:
            calls.append((lo, hi))

    old = config.SERIAL_WORK, config.TASKS_PER_THREAD
    config.SERIAL_WORK, config.TASKS_PER_THREAD = serial_work, tasks
    try:
        with er.threads(n):
            _threads.parallel_rows(run, rows, work)
    finally:
        config.SERIAL_WORK, config.TASKS_PER_THREAD = old
    covered = sorted(r for lo, hi in calls for r in range(lo, hi))
    assert covered == list(range(rows))
    threaded = min(n, rows, work // max(1, serial_work)) > 1
    assert len(calls) == (min(rows, min(n, rows, work // max(1, serial_work)) * tasks) if threaded else 1)


def test_parallel_rows_reraises_and_the_pool_keeps_working() -> None:
    def run(lo: int, hi: int) -> None:
        if lo <= 5 < hi:
            raise KeyError("row 5")

    with er.threads(3):
        old = config.SERIAL_WORK
        config.SERIAL_WORK = 0
        try:
            with pytest.raises(KeyError, match="row 5"):
                _threads.parallel_rows(run, 12, 10**6)
            seen = np.zeros(12, dtype=np.int64)

            def mark(lo: int, hi: int) -> None:
                seen[lo:hi] += 1

            _threads.parallel_rows(mark, 12, 10**6)
        finally:
            config.SERIAL_WORK = old
    assert (seen == 1).all()


def test_default_thread_count_uses_idle_cores_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a call takes no more helpers than idle cores; an explicit ``threads(n)`` is kept."""
    calls: list[tuple[int, int]] = []

    def run(lo: int, hi: int) -> None:
        calls.append((lo, hi))

    monkeypatch.setattr(config, "SERIAL_WORK", 1)
    monkeypatch.setattr(_threads, "_numba_threads", lambda: 3)
    for idle, explicit, tasks in [(0, None, 1), (-2, None, 1), (1, None, 8), (5, None, 12), (0, 3, 12)]:
        monkeypatch.setattr(_threads, "_idle_cores", lambda idle=idle: idle)
        calls.clear()
        with er.threads(explicit) if explicit else contextlib.nullcontext():
            _threads.parallel_rows(run, 40, 10**6)
        assert len(calls) == tasks, (idle, explicit)  # 1 task: serial; else threads x TASKS_PER_THREAD
    if os.path.exists("/proc/loadavg"):
        monkeypatch.undo()
        assert _threads._idle_cores() <= (os.cpu_count() or 1) - 1  # this thread is running


def test_parallel_rows_waits_for_a_stalled_helper_and_its_thread_lives_on() -> None:
    """A helper the scheduler stalls holds the call until its task is done (nothing is written after the return)."""
    caller = threading.get_ident()
    stalled, released = threading.Event(), threading.Event()

    def run(lo: int, hi: int, base: int, out: np.ndarray) -> int:
        if threading.get_ident() == caller:
            stalled.wait(10)  # let a helper take a task first
        elif not stalled.is_set():
            stalled.set()
            released.wait(10)  # a helper the scheduler has preempted
        out[lo - base:hi - base] = np.arange(lo, hi)[:, None] * 10 + np.arange(out.shape[1])
        return lo

    out = np.full((40, 3), -1, dtype=np.int64)
    timer = threading.Timer(0.2, released.set)
    old = config.SERIAL_WORK
    config.SERIAL_WORK = 0
    try:
        with er.threads(2):
            timer.start()
            values = _threads.parallel_rows(run, 40, 10**6, (out,))
    finally:
        config.SERIAL_WORK = old
        timer.cancel()
    assert released.is_set()  # returned only once the stalled task was done
    np.testing.assert_array_equal(out, np.arange(40)[:, None] * 10 + np.arange(3))
    assert values == [40 * i // 8 for i in range(8)]  # run's value per task, in row order (2 threads x 4 tasks)


def test_a_helpers_failure_reaches_the_caller_and_the_pool_keeps_working(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that fails in a helper thread is re-raised by the call; the helper thread survives."""
    caller = threading.get_ident()
    failed = threading.Event()

    def run(lo: int, hi: int, base: int, out: np.ndarray) -> None:
        if threading.get_ident() == caller:
            failed.wait(10)  # let a helper take a task first
        elif not failed.is_set():
            failed.set()
            raise MemoryError("no room in a helper")
        out[lo:hi] = 1

    monkeypatch.setattr(config, "SERIAL_WORK", 0)
    with er.threads(2):
        with pytest.raises(MemoryError, match="no room in a helper"):
            _threads.parallel_rows(run, 16, 10**6, (np.zeros(16),))
        helpers = [t for t in threading.enumerate() if t.name.startswith("etaretrieval-")]
        assert helpers and all(t.is_alive() for t in helpers)
        out = np.zeros(16)
        _threads.parallel_rows(lambda lo, hi, base, o: o[lo:hi].fill(2), 16, 10**6, (out,))
    assert (out == 2).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reads_loadavg_through_its_own_descriptor() -> None:
    """The inherited /proc/loadavg descriptor is closed in the child, which opens its own on first use."""
    _threads._idle_cores()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            reset = not _threads._loadavg
            idle = _threads._idle_cores()
            os.write(write, f"{int(reset)} {idle}".encode())
        finally:
            os._exit(0)
    os.close(write)
    reset, idle = os.read(read, 64).split()
    os.close(read)
    os.waitpid(pid, 0)
    assert reset == b"1" and int(idle) <= (os.cpu_count() or 1)


def test_parallel_rows_with_outputs_agrees_with_serial_for_any_threads() -> None:
    """Every task writes its rows of the outputs; values come back in row order."""

    def run(lo: int, hi: int, base: int, a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        for row in range(lo, hi):
            a[row - base] = row
            b[row - base] = -row
        return lo, hi

    old = config.SERIAL_WORK, config.TASKS_PER_THREAD
    try:
        for n, serial_work, tasks in [(1, 0, 4), (3, 0, 1), (3, 0, 5), (2, 10**9, 4)]:
            config.SERIAL_WORK, config.TASKS_PER_THREAD = serial_work, tasks
            a, b = np.zeros((23, 2)), np.zeros(23, dtype=np.int32)
            with er.threads(n):
                values = _threads.parallel_rows(run, 23, 10**6, (a, b))
            np.testing.assert_array_equal(a, np.repeat(np.arange(23.0)[:, None], 2, axis=1))
            np.testing.assert_array_equal(b, -np.arange(23))
            assert [lo for lo, _ in values] == sorted(lo for lo, _ in values)
            assert sum(hi - lo for lo, hi in values) == 23
    finally:
        config.SERIAL_WORK, config.TASKS_PER_THREAD = old


def _inputs(seed: int = 0, batch: int = 64, length: int = 300, words: int = 2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 2**64, size=(500, words), dtype=np.uint64) & np.uint64(0x0F0F_00FF_0F0F_00FF)
    ids = rng.integers(0, 500, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(0, length + 1, size=batch)
    return table[:batch].copy(), ids, table, lengths


@pytest.mark.parametrize("n", [2, 3, 8])
def test_default_threshold_serial_and_threaded_results_agree(n: int) -> None:
    """Large enough calls take the threaded path with the default threshold; results equal the serial ones."""
    query, ids, table, lengths = _inputs(batch=40, length=7000)
    assert ids.size * table.shape[1] >= 2 * config.SERIAL_WORK  # threaded with n >= 2
    with er.threads(1):
        want = er.topk_hamming_lookup(query, ids, table, 20, lengths=lengths, padding_id=7)
        want_keys = er.topk_hamming(query, table[ids], 20, lengths=lengths)
    with er.threads(n):
        got = er.topk_hamming_lookup(query, ids, table, 20, lengths=lengths, padding_id=7)
        got_keys = er.topk_hamming(query, table[ids], 20, lengths=lengths)
    for a, b in zip(got + got_keys, want + want_keys):
        np.testing.assert_array_equal(a, b)


def test_concurrent_callers_get_their_own_results() -> None:
    """Eight Python threads call at once, each on its own data, threaded and serial; results match the serial run."""
    cases = [_inputs(seed, batch=32, length=200) for seed in range(8)]
    with er.threads(1):
        want = [er.topk_hamming_lookup(q, i, t, 10, lengths=n) for q, i, t, n in cases]
    got: list[object] = [None] * len(cases)
    start = threading.Barrier(len(cases))
    old = config.SERIAL_WORK
    config.SERIAL_WORK = 0

    def call(j: int) -> None:
        q, i, t, n = cases[j]
        start.wait()
        with er.threads(1 + j % 3):
            for _ in range(5):
                got[j] = er.topk_hamming_lookup(q, i, t, 10, lengths=n)

    try:
        workers = [threading.Thread(target=call, args=(j,)) for j in range(len(cases))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        config.SERIAL_WORK = old
    for g, w in zip(got, want):
        assert isinstance(g, tuple)
        np.testing.assert_array_equal(g[0], w[0])
        np.testing.assert_array_equal(g[1], w[1])


_HOST_SETTINGS = r"""
import numba
import numpy as np  # OpenBLAS starts its threads here, before the count
from numba.np.ufunc import parallel

def os_threads():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))

try:
    import torch
    torch_threads = torch.get_num_threads()
except ImportError:
    torch = None
before = os_threads()
import etaretrieval as er
if torch is not None:
    import etaretrieval.torch
assert os_threads() == before, ("import started threads", before, os_threads())
assert not parallel._is_initialized, "import started Numba's threading layer"
if torch is not None:
    assert torch.get_num_threads() == torch_threads, (torch_threads, torch.get_num_threads())
table = np.arange(4000, dtype=np.uint64).reshape(2000, 2)
ids = np.random.default_rng(0).integers(0, 2000, size=(64, 3000))
er.topk_hamming_lookup(table[:64], ids, table, 8)          # threaded by default
er.hamming(table, table)
er.pack_signatures(np.ones((5, 4)), er.hyperplanes(4, 64))
assert not parallel._is_initialized, "a call started Numba's threading layer"
if torch is not None:
    assert torch.get_num_threads() == torch_threads
# numba.set_num_threads of the calling thread is honoured once the host started Numba's pool
numba.set_num_threads(1)
assert er._threads.thread_count() == 1
with er.threads(2):
    assert er._threads.thread_count() == 2
print("ok")
"""


def test_import_and_calls_change_no_host_setting() -> None:
    proc = subprocess.run([sys.executable, "-c", _HOST_SETTINGS], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.strip() == "ok"


def test_numba_num_threads_one_leaves_torch_alone() -> None:
    """Issue 10: importing the torch plugin with NUMBA_NUM_THREADS=1 changed torch.get_num_threads()."""
    pytest.importorskip("torch")
    code = ("import torch; n = torch.get_num_threads(); import etaretrieval.torch; "
            "assert torch.get_num_threads() == n, (n, torch.get_num_threads()); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]


@pytest.mark.parametrize("blas_work", [0, 1 << 40])
def test_pack_paths_agree_on_integer_inputs(blas_work: int) -> None:
    """The Numba projection (request-sized) and the BLAS / torch.matmul one (table-sized) give the same bits.

    Integer-valued inputs make every summation order exact; the torch op must match the NumPy API on both paths.
    """
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(2, 37, 9)).astype(np.float32)
    planes = rng.integers(-2, 3, size=(9, 130)).astype(np.float64)
    want = (np.einsum("...d,db->...b", x.astype(np.float64), planes) > 0)
    words = np.zeros((2, 37, 3), dtype=np.uint64)
    for j in range(130):
        words[..., j // 64] |= want[..., j].astype(np.uint64) << np.uint64(j % 64)
    old = config.PACK_BLAS_WORK
    config.PACK_BLAS_WORK = blas_work
    try:
        np.testing.assert_array_equal(er.pack_signatures(x, planes), words)
        np.testing.assert_array_equal(er.pack_signatures(x[:, ::2], planes), words[:, ::2])
        torch = pytest.importorskip("torch")
        import etaretrieval.torch  # noqa: F401

        got = torch.ops.etaretrieval.pack_signatures(torch.from_numpy(x), torch.from_numpy(planes))
        np.testing.assert_array_equal(got.numpy().view(np.uint64), words)
        bad = x.copy()
        bad[1, 5, 2] = np.nan
        with pytest.raises(ValueError, match=r"row \(1, 5\)"):
            er.pack_signatures(bad, planes)
        with pytest.raises(ValueError, match=r"row \(1, 5\)"):
            torch.ops.etaretrieval.pack_signatures(torch.from_numpy(bad), torch.from_numpy(planes))
    finally:
        config.PACK_BLAS_WORK = old


_CACHE_RUN = r"""
import numba
import numpy as np
import etaretrieval as er
from etaretrieval.cpu.pack import project_pack
er.pack_signatures(np.ones((3, 4), dtype=np.float32), er.hyperplanes(4, 64))
print(sum(project_pack.stats.cache_hits.values()), sum(project_pack.stats.cache_misses.values()))
"""


def _as_other_user() -> list[str] | None:
    """A command prefix that drops root (for whom no directory is read-only), ``[]`` when not root, else ``None``."""
    import shutil

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return None if setpriv is None else [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(_as_other_user() is None, reason="runs as root and cannot drop privileges")
def test_on_disk_cache_works_from_a_read_only_install() -> None:
    """With the package directory read-only, Numba caches in the user's cache directory: a second process loads."""
    import shutil
    import tempfile

    prefix = _as_other_user() or []
    base = Path(tempfile.mkdtemp(prefix="etaretrieval-ro-"))
    try:
        base.chmod(0o755)
        site = base / "site"
        shutil.copytree(Path(er.__file__).parent, site / "etaretrieval",
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
        for path in [site, *site.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        cache = base / "user-cache"
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
        dropped = ("NUMBA_CACHE_DIR", "ETARETRIEVAL_NO_CACHE", "NUMBA_DISABLE_JIT")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(cache), HOME=str(cache), PYTHONDONTWRITEBYTECODE="1")
        runs = [subprocess.run([*prefix, sys.executable, "-c", _CACHE_RUN], capture_output=True, text=True,
                               timeout=600, env=env, cwd=base) for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stderr[-5000:]
        assert runs[0].stdout.split() == ["0", "1"]  # compiled, and written to the user's cache
        assert runs[1].stdout.split() == ["1", "0"]  # loaded from it
        assert list(cache.rglob("*.nbi"))
        assert not list(site.rglob("*.nbi"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
_V1_CPU = "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
_V1_OTHER = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
_HYBRID = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize("cgroup, mountinfo, files, cpus", [
    ("0::/\n", _V2, {"sys/fs/cgroup/cpu.max": "150000 100000\n"}, 2),  # v2, cgroup namespace: rounded up
    ("0::/\n", _V2, {"sys/fs/cgroup/cpu.max": "max 100000\n"}, None),  # v2 without a quota
    ("0::/pods/p1/c1\n", _V2, {"sys/fs/cgroup/pods/p1/cpu.max": "100000 100000\n",  # the parent's is tighter
                               "sys/fs/cgroup/pods/p1/c1/cpu.max": "400000 100000\n"}, 1),
    ("0::/pods/p1/c1\n", _V2, {"sys/fs/cgroup/pods/cpu.max": "max 100000\n"}, None),
    ("5:memory:/\n4:cpu,cpuacct:/docker/abc\n", _V1_OTHER + _V1_CPU.format(root="/docker/abc"),  # v1, no namespace
     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3),
    ("4:cpu,cpuacct:/\n", _V1_CPU.format(root="/"), {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                                     "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ("1:cpu,cpuacct:/a\n0::/\n", _HYBRID + _V1_CPU.format(root="/"),  # v2 mounted beside v1's cpu controller
     {"sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us": "50000\n",
      "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us": "100000\n"}, 1),
    ("0::/\n", "31 23 0:28 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n",  # escaped space in a mount point
     {"sys/fs/my cgroup/cpu.max": "800000 200000\n"}, 4),
    (None, None, {"sys/fs/cgroup/cpu.max": "300000 100000\n"}, 3),  # no /proc: the usual v2 path
    (None, None, {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n",  # ... and the usual v1 one
                  "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 2),
    (None, None, {}, None),
    ("0::/\n", _V2, {"sys/fs/cgroup/cpu.max": "garbage\n"}, None),
])
def test_cgroup_cpu_quota_reads_fake_cgroups(tmp_path: Path, cgroup: str | None, mountinfo: str | None,
                                             files: dict[str, str], cpus: int | None) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    if cgroup is not None:
        (proc / "cgroup").write_text(cgroup)
    if mountinfo is not None:
        (proc / "mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _threads.cgroup_cpu_quota(str(proc), str(tmp_path)) == cpus


@pytest.mark.parametrize("affinity, quota, expected", [(64, "200000 100000", 2), (1, "200000 100000", 1),
                                                       (64, "max 100000", 64), (3, "1000 100000", 1)])
def test_default_count_is_the_cpus_the_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       affinity: int, quota: str, expected: int) -> None:
    """A 2-CPU quota on a 64-core machine gives 2 threads and 2 cores' worth of idle-core rule; read once."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text("0::/pod\n")
    (tmp_path / "proc" / "mountinfo").write_text(_V2)
    (tmp_path / "sys/fs/cgroup/pod").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/pod/cpu.max").write_text(quota)
    monkeypatch.setattr(_threads, "_PROC_SELF", str(tmp_path / "proc"))
    monkeypatch.setattr(_threads, "_ROOT", str(tmp_path))
    monkeypatch.setattr(_threads, "_cpus", [])
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(_threads, "_numba_threads", lambda: None)
    assert _threads.cpu_limit() == expected
    assert _threads.thread_count() == expected
    (tmp_path / "sys/fs/cgroup/pod/cpu.max").write_text("max 100000")
    assert _threads.cpu_limit() == expected  # read once
    assert _threads._idle_cores() <= expected - 1  # however idle the 64 cores are
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(config, "SERIAL_WORK", 1)
    monkeypatch.setattr(_threads, "_idle_cores", lambda: expected - 1)  # every CPU of the process idle
    _threads.parallel_rows(lambda lo, hi: calls.append((lo, hi)), 1000, 10**9)
    assert len(calls) == (1 if expected == 1 else expected * config.TASKS_PER_THREAD)


def test_numba_setting_is_honoured_where_it_was_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``NUMBA_NUM_THREADS`` other than Numba's default counts as given, above the CPU limit too."""
    monkeypatch.setattr(_threads._numba_parallel, "_is_initialized", False)
    monkeypatch.setattr(_threads, "_cpus", [2])
    default = numba.config.NUMBA_DEFAULT_NUM_THREADS
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", default)
    assert _threads._numba_threads() is None and _threads.thread_count() == 2
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", default + 5)
    assert _threads._numba_threads() == default + 5 == _threads.thread_count()
