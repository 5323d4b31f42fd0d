"""Tunable constants of the CUDA kernels.

They change speed and shared-memory use only, never results; the simulator
tests set them to tiny values so that every tile boundary is exercised. The
kernels are compiled per value set (lazily, on first device use).
"""

from __future__ import annotations

__all__ = [
    "TOPK_THREADS",
    "TOPK_ITEMS",
    "TOPK_SHARED_SCRATCH_BYTES",
    "HAMMING_THREADS",
    "PACK_ROWS_PER_BLOCK",
]

#: Threads of the one block that handles a row in the top-K kernels
#: (a power of two, 1..1024).
TOPK_THREADS: int = 256

#: Positions each thread classifies per emission tile; a tile covers
#: ``TOPK_THREADS * TOPK_ITEMS`` positions (at most 32767).
TOPK_ITEMS: int = 8

#: A row's per-position distances (uint16) are kept in dynamic shared memory
#: when ``2 * L`` fits in this many bytes, else in a global ``(B, L)`` scratch.
TOPK_SHARED_SCRATCH_BYTES: int = 32 * 1024

#: Threads per block of the Hamming-distance kernel.
HAMMING_THREADS: int = 256

#: Rows per block of the packing kernel (a block is ``64 x rows`` threads:
#: one thread per signature bit).
PACK_ROWS_PER_BLOCK: int = 4
