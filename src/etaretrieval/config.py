"""Tunable constants of the CPU kernels.

They change speed and memory use only, never results; the tests set them to
tiny values to exercise every chunk boundary. (The top-K kernels' own
compile-time constants live in ``etaretrieval.cpu.topk``.)
"""

from __future__ import annotations

__all__ = ["PACK_BLAS_WORK", "PACK_CHUNK_ELEMENTS", "TASKS_PER_THREAD", "SERIAL_WORK", "MAX_BITS"]

#: :func:`etaretrieval.pack_signatures` projects inputs of up to this many
#: multiply-adds (rows x dim x bits: 2,048 rows at d = 128 and 256 bits) in a
#: Numba kernel on the library's threads, larger ones with BLAS. Below it,
#: BLAS would wake its own thread pool, whose threads keep spinning for
#: milliseconds after the product and slow the next kernel (on two busy
#: cores, 1,024 x 128 -> 256 bits took 1.9 ms in Numba and 13 ms with BLAS).
PACK_BLAS_WORK: int = 1 << 26

#: Projection elements (rows x bits) computed per BLAS call in
#: :func:`etaretrieval.pack_signatures`; bounds its extra memory to
#: ``PACK_CHUNK_ELEMENTS`` floats (4 MiB in float32), whatever the number of
#: rows. Smaller blocks make BLAS calls too small to run at full speed (on two
#: cores, ``1 << 16`` cost 1.3-1.9 times the bare product at 64-256 bits,
#: ``1 << 20`` 1.0-1.4 times).
PACK_CHUNK_ELEMENTS: int = 1 << 20

#: The top-K kernels split the batch into ``TASKS_PER_THREAD`` x threads
#: tasks; each task allocates its scratch once.
TASKS_PER_THREAD: int = 4

#: Work (``B x L x W``: behaviours times signature words) that one thread
#: must have before a call uses another: smaller calls run in the calling
#: thread, without waking the pool (see :func:`etaretrieval.threads`).
#: Waking a sleeping helper costs about 100 microseconds on the 2-core
#: development VM: a lookup of 1 << 17 (B = 128, L = 1,024, 64 bits, about
#: 180 us) gained 1.06-1.12x from a second thread, B = 16, L = 10,000
#: (160,000) nothing, B = 64, L = 1,024 lost 10-20 %; 1 << 18 gained 1.2-1.4x.
SERIAL_WORK: int = 1 << 17

#: Longest supported signature (16 words of 64 bits).
MAX_BITS: int = 1024
