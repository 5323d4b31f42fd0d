"""Tunable constants of the CPU kernels.

They change speed and memory use only, never results; the tests set them to
tiny values to exercise every chunk boundary. (The top-K kernels' own
compile-time constants live in ``etaretrieval.cpu.topk``.)
"""

from __future__ import annotations

__all__ = ["PACK_CHUNK_ELEMENTS", "TASKS_PER_THREAD", "MAX_BITS"]

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

#: Longest supported signature (16 words of 64 bits).
MAX_BITS: int = 1024
