"""``python -m etaretrieval.offline``: top-K retrieval over a Parquet dataset, on Dask.

The command line of :func:`etaretrieval.dask.retrieve_parquet`::

    python -m etaretrieval.offline --input DIR --table PATH --output DIR --k K \\
        [--scheduler ADDRESS | --workers N] [--history-col history --target-col target] [--no-verify]
        [--compression snappy|zstd|lz4|gzip|brotli|none]

``--table`` is a directory written by :meth:`etaretrieval.SignatureTable.save`
(its signatures are checked against their checksums before the job starts,
unless ``--no-verify``) or a ``.npy`` file of ``(N, W)`` uint64 signatures.
Without ``--scheduler`` a local cluster of ``--workers`` processes runs the
job (``--workers 1``: the command itself, no cluster). The command's own
process allocates Arrow buffers with jemalloc where pyarrow has it (unless
``ARROW_DEFAULT_MEMORY_POOL`` names a pool). Re-running the same
command skips the parts that are done. The exit status is 0 when every row
was written (rows with an ``error`` message included), 1 on a failure, 2 on
bad arguments or a missing ``dask`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m etaretrieval.offline",
        description="Retrieve the top-K history items of every row of a Parquet dataset (Dask).",
    )
    p.add_argument("--input", required=True, help="Parquet file or directory of Parquet files")
    p.add_argument("--table", required=True,
                   help="directory written by SignatureTable.save, or a .npy file of (N, W) uint64 signatures")
    p.add_argument("--output", required=True, help="output directory (part-NNNNN.parquet files)")
    p.add_argument("--k", required=True, type=int, help="items retrieved per row")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler (default: a local cluster)")
    where.add_argument("--workers", type=int, help="processes of the local cluster (default: the CPUs, up to 8; "
                       "1: no cluster, the parts run in this process)")
    p.add_argument("--history-col", default="history", help="list<int64> column of item ids, oldest first")
    p.add_argument("--target-col", default="target", help="int64 column: the item whose table row is the query")
    p.add_argument("--batch-rows", type=int, default=65536, help="rows retrieved at a time within a part")
    p.add_argument("--rows-per-part", type=int, default=1_000_000, help="rows per task (whole row groups)")
    p.add_argument("--compression", default="snappy", choices=("snappy", "zstd", "lz4", "gzip", "brotli", "none"),
                   help="codec of the output files (none: the fastest to write, the largest)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the table's signatures against their checksums before the job")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _use_jemalloc() -> None:
    """Allocate this process's Arrow buffers with jemalloc, unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool.

    A fresh process reads a large Parquet file markedly slower with pyarrow's
    default mimalloc pool (figures in the Scaling out guide); pyarrow builds
    without jemalloc keep their default.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    pa = importlib.import_module("pyarrow")
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    As the command does, it makes jemalloc this process's Arrow memory pool
    (where pyarrow has it and ``ARROW_DEFAULT_MEMORY_POOL`` names none).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success.

    Examples
    --------
    >>> from etaretrieval.offline import main
    >>> main(["--input", "no/such/dir", "--table", "items.sigtable", "--output", "out", "--k", "32"])
    1
    """
    args = _parser().parse_args(argv)
    try:
        from .dask import retrieve_parquet
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _use_jemalloc()
    try:
        summary = retrieve_parquet(
            args.input, args.table, args.output, args.k,
            history_col=args.history_col, target_col=args.target_col, verify=not args.no_verify,
            scheduler=args.scheduler,
            workers=args.workers, progress=not args.quiet, batch_rows=args.batch_rows,
            rows_per_part=args.rows_per_part, compression=args.compression,
        )
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{summary.rows} rows in {summary.partitions} parts ({summary.skipped} already done), "
        f"{summary.errors} rows with errors, {summary.seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
