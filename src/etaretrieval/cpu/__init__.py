"""Numba CPU kernels. Internal: call them through the public, validated API."""
