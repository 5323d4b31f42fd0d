"""A ``fork``\\ ed child can call every kernel, whether or not its parent ran one (issue 11.1).

Each case runs in a fresh interpreter, so that the import state is the one a
user's program has: the script imports the library, optionally runs every
kernel in the parent (starting the library's thread pool), then forks a
``multiprocessing`` child that runs every kernel again, on the serial and the
threaded path, and sends its results back. Under GNU OpenMP (Numba's default
threading layer) such a child was killed with "fork() called from a process
already using GNU OpenMP".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import multiprocessing as mp, pickle, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns when forking a threaded process
import numpy as np
import etaretrieval as er
from etaretrieval import config
try:
    import torch, etaretrieval.torch
except ImportError:
    torch = None

def run_all():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8), dtype=np.float32)
    planes = er.hyperplanes(8, 128, seed=1)
    table = er.pack_signatures(x, planes)
    ids = rng.integers(0, 40, size=(16, 30))
    out = [table, er.hamming(table[:16, None], table[None, :5])]
    config.SERIAL_WORK = 0  # the tiny calls below take the threaded path too
    for n in (1, 3):
        with er.threads(n):
            out += er.topk_hamming(table[:16], table[ids], 5, lengths=np.arange(16))
            out += er.topk_hamming_lookup(table[:16], ids, table, 7, padding_id=3)
            out += er.topk_hamming_lookup(table[:16], ids[0], table, 7)
            out.append(er.sdim_codes(table, 8))
            out.append(er.sdim_pool(table[:16], table[ids], x[ids], 8, lengths=np.arange(16)))
            out.append(er.sdim_from_buckets(table[:16], er.sdim_buckets(table[ids[0]], x[ids[0]], 8)))
            if torch is not None:
                t = torch.from_numpy(table.view(np.int64))
                ops = torch.ops.etaretrieval
                out.append(ops.pack_signatures(torch.from_numpy(x), torch.from_numpy(planes)).numpy())
                out += [r.numpy() for r in ops.topk_hamming_lookup(t[:16], torch.from_numpy(ids), t, 7)]
    return out

def child(conn):
    conn.send(pickle.dumps(run_all()))
    conn.close()

if __name__ == "__main__":
    expected = run_all() if sys.argv[1] == "parent-ran" else None
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(send,))
    proc.start()
    got = pickle.loads(recv.recv())
    proc.join(300)
    assert proc.exitcode == 0, f"child exit code {proc.exitcode}"
    if expected is None:
        expected = run_all()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    print("ok", len(got))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.parametrize("parent", ["parent-ran", "parent-idle"])
def test_forked_child_runs_every_kernel(tmp_path: Path, parent: str) -> None:
    script = tmp_path / "fork_case.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), parent], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    assert proc.stdout.startswith("ok ")


_HELD_AT_FORK = r"""
import os, signal, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns when forking a threaded process
import numpy as np
from etaretrieval import _threads, config

config.SERIAL_WORK = 0           # every call below is worth helpers
_threads.cpu_limit = lambda: 4   # and may have them, whatever this machine's CPUs

def run(lo, hi, base, out):
    out[lo - base:hi - base] = np.arange(lo, hi)[:, None] * 3

def call(n=None):
    out = np.zeros((40, 2), dtype=np.int64)
    if n is None:
        _threads.parallel_rows(run, 40, 10**6, (out,))
    else:
        with _threads.threads(n):
            _threads.parallel_rows(run, 40, 10**6, (out,))
    return out

want = call(1)
call(3)  # the parent's pool is started: the child must not count on its helpers
held, release = threading.Event(), threading.Event()

def hold():  # another thread holds every lock of the module while the process forks
    with _threads._loadavg_lock, _threads._pool.lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(60)  # a deadlock kills the child instead of hanging the test
    ok = all((call(n) == want).all() for n in (None, 5, None, 2))  # None: reads /proc/loadavg; 5: starts helpers
    os._exit(0 if ok else 3)
release.set()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_runs_while_the_parent_held_the_locks(tmp_path: Path) -> None:
    """A thread holds the module's locks while the process forks: the child's parallel calls still complete."""
    script = tmp_path / "held_at_fork.py"
    script.write_text(_HELD_AT_FORK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.split() == ["child", "0"], proc.stdout + proc.stderr[-3000:]
