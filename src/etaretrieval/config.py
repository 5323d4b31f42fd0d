"""Tunable constants of the CPU kernels.

They change speed and memory use only, never results; the tests set them to
tiny values to exercise every chunk boundary. (The top-K kernels' own
compile-time constants live in ``etaretrieval.cpu.topk``.) The measurements
behind the values are in the performance guide (docs/user_guide/performance.rst).
"""

from __future__ import annotations

__all__ = ["PACK_BLAS_WORK", "PACK_CHUNK_ELEMENTS", "TASKS_PER_THREAD", "SERIAL_WORK", "MAX_BITS"]

#: :func:`etaretrieval.pack_signatures` projects inputs of up to this many
#: multiply-adds (rows x dim x bits: 2,048 rows at d = 128 and 256 bits) in a
#: Numba kernel on the library's threads, larger ones with BLAS. Below it,
#: BLAS would wake its own thread pool, whose threads keep spinning for
#: milliseconds after the product and slow the next kernel.
PACK_BLAS_WORK: int = 1 << 26

#: Projection elements (rows x bits) computed per BLAS call in
#: :func:`etaretrieval.pack_signatures`; bounds its extra memory to
#: ``PACK_CHUNK_ELEMENTS`` floats (4 MiB in float32), whatever the number of
#: rows. Smaller blocks make BLAS calls too small to run at full speed.
PACK_CHUNK_ELEMENTS: int = 1 << 20

#: The top-K kernels split the batch into ``TASKS_PER_THREAD`` x threads
#: tasks; each task allocates its scratch once.
TASKS_PER_THREAD: int = 4

#: Work (``B x L x W``: behaviours times signature words) that one thread
#: must have before a call uses another: smaller calls run in the calling
#: thread, without waking the pool (see :func:`etaretrieval.threads`):
#: waking a sleeping helper costs about as much as such a call.
SERIAL_WORK: int = 1 << 17

#: Longest supported signature (16 words of 64 bits).
MAX_BITS: int = 1024
