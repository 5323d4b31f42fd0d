"""
=========================
Serving on a GPU
=========================

The same calls as on the CPU, with device arrays: every function of
etaretrieval runs on the GPU when its arrays expose
``__cuda_array_interface__`` (numba device arrays, CuPy arrays, PyTorch CUDA
tensors) and returns device arrays of the same library. The results equal the
CPU's exactly.

This example needs an NVIDIA GPU and the ``cuda`` extra
(``pip install "etaretrieval[cuda]"``); it is not run when the documentation is
built. Without a GPU, run it under Numba's CUDA simulator with small sizes:
``NUMBA_ENABLE_CUDASIM=1 ETA_EXAMPLE_SMALL=1 python examples/gpu_serving.py``.
"""

# %%
# Data on the host
# ----------------
import os

import numpy as np
from numba import cuda

import etaretrieval as er

# sphinx_gallery_thumbnail_path = "_static/gpu_serving_thumb.svg"
small = os.environ.get("ETA_EXAMPLE_SMALL", "0") != "0"
n_items, dim, bits = (2_000, 16, 64) if small else (1_000_000, 64, 128)
batch, seq_len, k = (8, 300, 16) if small else (1_024, 10_000, 64)

rng = np.random.default_rng(0)
weight = rng.standard_normal((n_items, dim), dtype=np.float32)
ids = rng.integers(0, n_items, size=(batch, seq_len), dtype=np.int32)
lengths = rng.integers(0, seq_len + 1, size=batch)
targets = rng.integers(0, n_items, size=batch)

# %%
# Numba device arrays
# -------------------
# Move the embedding table to the GPU once: the signature table is then hashed
# and kept on the GPU. Per request, only the ids (and lengths) move.
hasher = er.SimHasher(dim, bits, seed=0)
d_weight = cuda.to_device(weight)
table = er.SignatureTable(d_weight, hasher)  # table.signatures: (N, W) uint64 on the GPU

d_ids = cuda.to_device(ids)
d_lengths = cuda.to_device(lengths)
d_query = hasher(cuda.to_device(weight[targets]))  # (B, W) on the GPU
d_idx, d_dist = er.topk_hamming_lookup(d_query, d_ids, table.signatures, k, lengths=d_lengths)
idx, dist = d_idx.copy_to_host(), d_dist.copy_to_host()
print(idx.shape, dist.shape)

# %%
# Identical to the CPU
# --------------------
# Same order (distance ascending, then the newest position), same ``-1`` tails.
# The CPU runs here on the GPU's signatures copied to the host (a signature
# hashed on the CPU can differ from the GPU's only where a projection lies within
# rounding of 0).
cpu_idx, cpu_dist = er.topk_hamming_lookup(
    d_query.copy_to_host(), ids, table.signatures.copy_to_host(), k, lengths=lengths
)
np.testing.assert_array_equal(idx, cpu_idx)
np.testing.assert_array_equal(dist, cpu_dist)
print("GPU == CPU")

# %%
# Refreshing rows on the GPU
# --------------------------
# The table holds the device array by reference: update rows in place on the
# device, then rehash only those rows.
changed = np.array([3, 17])
for row in changed:
    d_weight[row] = -weight[row]  # e.g. an online update of two items
table.refresh(rows=changed)
sig = table.signatures.copy_to_host()
print(sig[changed] == er.pack_signatures(-weight[changed], hasher.planes))

# %%
# PyTorch CUDA tensors
# --------------------
# Tensors go in as they are and tensors come out, on the same device, computed
# on torch's current stream. Signatures are ``torch.uint64`` tensors (PyTorch
# stores them but has no arithmetic on them; the kernels do it).
try:
    import torch
except ImportError:
    torch = None

if torch is not None and torch.cuda.is_available():
    t_weight = torch.from_numpy(weight).cuda()
    t_table = er.SignatureTable(t_weight, hasher)
    t_query = hasher(t_weight[torch.from_numpy(targets).cuda()])
    t_idx, t_dist = er.topk_hamming_lookup(
        t_query, torch.from_numpy(ids).cuda(), t_table.signatures, k, lengths=torch.from_numpy(lengths).cuda()
    )
    print(type(t_idx).__name__, t_idx.device, t_idx.dtype, t_dist.dtype)
    # The retrieved item ids, still on the GPU; -1 marks an empty slot.
    t_items = torch.where(t_idx >= 0, torch.from_numpy(ids).cuda().gather(1, t_idx.clamp(min=0)), -1)
    print(t_items[:2, :8])
