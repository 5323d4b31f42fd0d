"""The on-disk format of a :class:`~etaretrieval.SignatureTable`: checksummed, written atomically, verified on demand.

A table is a directory of three files:

``table.json``
    The description: ``format``, ``version`` (:data:`VERSION`), ``rows``,
    ``words``, ``bits``, ``dim``, ``embedding_shape``, ``planes_sha256`` (the
    planes' fingerprint), ``signatures`` (the layout of ``signatures.npy``:
    ``dtype``, ``shape``, ``header_bytes``, ``header_sha256``, ``data_bytes``
    and ``checksum``: ``algorithm``, ``block_bytes`` and one digest per block
    of the data) and ``meta_sha256``, the digest of all of the above, so a
    changed description is refused like a changed file.
``signatures.npy``
    The ``(N, W)`` ``<u8`` signatures, a plain ``.npy`` file (memory-mappable).
``planes.npy``
    The ``(dim, bits)`` ``<f4`` hyperplanes.

Opening checks everything that costs O(1): the description and its digest,
the ``.npy`` header of the signatures (its digest and its fields), the file
size and the planes (their fingerprint). Verifying reads the data and checks
each block's digest, in threads (``hashlib`` releases the GIL).

A table is written into a fresh directory beside the target, each file and
the directory synced to disk, then swapped with the target in one step
(``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames), so a reader
sees the old table or the new one and an interrupted save leaves the old one
in place. Readers open the files through one descriptor of the directory, so
they read one table even while it is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np

from .config import MAX_BITS

__all__ = [
    "FORMAT",
    "VERSION",
    "ALGORITHM",
    "TableFileError",
    "TableFile",
    "Verification",
    "fingerprint",
    "open_table",
    "write_table",
]

FORMAT = "etaretrieval.SignatureTable"
#: The format version ``save`` writes. Version 1 (no checksums) is still read; newer versions are refused.
VERSION = 2
#: The digest of every checksummed region: SHA-256 (hardware-accelerated where the CPU has SHA extensions).
ALGORITHM = "sha256"
META, SIGNATURES, PLANES = "table.json", "signatures.npy", "planes.npy"
#: Bytes of data per checksum block: 16 MiB, doubled until a table has at most :data:`MAX_BLOCKS` blocks.
BLOCK_BYTES = 1 << 24
MAX_BLOCKS = 1024
#: Bytes read (and hashed) at a time by a verifying thread, whatever the block size.
READ_BYTES = 1 << 24
#: Largest ``table.json`` read (a description of :data:`MAX_BLOCKS` blocks is about 70 kB).
MAX_META_BYTES = 1 << 22
_HEX = frozenset("0123456789abcdef")


class TableFileError(ValueError):
    """A saved :class:`~etaretrieval.SignatureTable` cannot be read as it is: damaged, incomplete or not a table.

    Raised by :meth:`~etaretrieval.SignatureTable.load` and
    :meth:`~etaretrieval.SignatureTable.verify`. The message names the path
    and what is wrong; ``path`` holds the table's directory.

    Examples
    --------
    >>> import os, tempfile, etaretrieval as er
    >>> path = tempfile.mkdtemp()
    >>> try:
    ...     er.SignatureTable.load(path)
    ... except er.TableFileError as err:
    ...     print(err.path == path, "no table.json" in str(err))
    True True
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"the SignatureTable at {self.path!r} {problem}")


TableFileError.__module__ = "etaretrieval"  # its public home: tracebacks and docs say etaretrieval.TableFileError


class _Replaced(Exception):
    """The table directory was replaced (by a save) while it was being read: read it again."""


def fingerprint(planes: np.ndarray) -> str:
    """SHA-256 of float32 planes: shape and little-endian bytes."""
    p = np.ascontiguousarray(planes, dtype="<f4")
    return hashlib.sha256(repr(p.shape).encode() + p.tobytes()).hexdigest()


def _digest(data: Any) -> str:
    return hashlib.new(ALGORITHM, data).hexdigest()


def _meta_digest(meta: dict[str, Any]) -> str:
    """The digest of a description without its own ``meta_sha256``, over a canonical JSON text."""
    body = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return _digest(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def block_bytes_for(nbytes: int) -> int:
    """The checksum block of ``nbytes`` of data: :data:`BLOCK_BYTES`, doubled until at most :data:`MAX_BLOCKS`."""
    block = BLOCK_BYTES
    while -(-nbytes // block) > MAX_BLOCKS:
        block *= 2
    return block


def _threads() -> int:
    from ._threads import thread_count  # the library's setting (etaretrieval.threads) bounds verification too

    return max(1, thread_count())


def _block_digests(data: memoryview, block: int) -> list[str]:
    spans = range(0, len(data), block)
    with ThreadPoolExecutor(min(_threads(), max(1, len(spans)))) as pool:
        return list(pool.map(lambda a: _digest(data[a : a + block]), spans))


# --------------------------------------------------------------------------- writing


def _write_file(staging: Path, name: str, parts: list[Any]) -> None:
    with open(staging / name, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())


def _npy_header(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))
    return out.getvalue()


def _sync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be opened for fsync
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    call = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if call is None:  # a C library older than glibc 2.28
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if call(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the flag
        return False
    raise OSError(code, os.strerror(code), str(b))


def write_table(target: Path, signatures: np.ndarray, planes: np.ndarray, fields: dict[str, Any]) -> None:
    """Write a table to the directory ``target`` atomically (see the module docstring).

    ``signatures`` ``(N, W)`` and ``planes`` ``(dim, bits)`` are host arrays;
    ``fields`` the description's table fields (``rows``, ``bits``, ...).
    """
    sig = np.ascontiguousarray(signatures, dtype="<u8")
    planes = np.ascontiguousarray(planes, dtype="<f4")
    header = _npy_header(sig)
    data = sig.reshape(-1).data.cast("B")
    block = block_bytes_for(data.nbytes)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        **fields,
        "signatures": {
            "dtype": "<u8",
            "shape": list(sig.shape),
            "header_bytes": len(header),
            "header_sha256": _digest(header),
            "data_bytes": data.nbytes,
            "checksum": {"algorithm": ALGORITHM, "block_bytes": block, "blocks": _block_digests(data, block)},
        },
    }
    meta["meta_sha256"] = _meta_digest(meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".saving", dir=target.parent))
    try:
        _write_file(staging, SIGNATURES, [header, data])
        _write_file(staging, PLANES, [_npy_header(planes), planes.reshape(-1).data.cast("B")])
        _write_file(staging, META, [(json.dumps(meta, indent=1) + "\n").encode()])
        _sync_dir(staging)
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):  # staging now holds the old table
            shutil.rmtree(staging, ignore_errors=True)
        else:  # two renames: for a moment there is no table at target
            aside = staging.with_suffix(".old")
            os.rename(target, aside)
            os.rename(staging, target)
            shutil.rmtree(aside, ignore_errors=True)
        _sync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- reading


def _field(where: Path, meta: dict[str, Any], key: str, kind: type, what: str = "table.json") -> Any:
    if key not in meta:
        raise TableFileError(where, f"is incomplete: {what} has no {key!r}; save the table again")
    value = meta[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise TableFileError(where, f"is damaged: {what} {key!r} must be a non-negative integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise TableFileError(where, f"is damaged: {what} {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _hex(where: Path, value: Any, what: str) -> str:
    if value is None:
        raise TableFileError(where, f"is incomplete: {what} is missing; save the table again")
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise TableFileError(where, f"is damaged: {what} must be a 64-digit hex digest, got {value!r}")
    return value


@dataclass
class Layout:
    """Where the data of ``signatures.npy`` lies and its digests (``digests`` empty for version 1)."""

    rows: int
    words: int
    offset: int
    block: int = 0
    digests: list[str] = field(default_factory=list)


def _check_meta(where: Path, meta: dict[str, Any]) -> Layout | None:
    """The signatures' layout a description records (None for version 1, which records none)."""
    version = meta.get("version")
    if type(version) is not int:  # not a bool either (True == 1)
        raise TableFileError(where, f"is damaged: table.json 'version' must be an integer, got {version!r}")
    if version == VERSION:
        _hex(where, meta.get("meta_sha256"), "table.json 'meta_sha256'")
        if _meta_digest(meta) != meta["meta_sha256"]:
            raise TableFileError(where, "is damaged: table.json does not match its digest ('meta_sha256')")
    elif version != 1:
        raise TableFileError(
            where,
            f"has format version {version}; this etaretrieval reads versions 1..{VERSION}"
            + (": upgrade etaretrieval to read it" if version > VERSION else ""),
        )
    rows = _field(where, meta, "rows", int)
    words = _field(where, meta, "words", int)
    bits = _field(where, meta, "bits", int)
    dim = _field(where, meta, "dim", int)
    if not 1 <= bits <= MAX_BITS or words != -(-bits // 64) or dim < 1:
        raise TableFileError(where, f"is damaged: table.json has bits {bits}, words {words}, dim {dim}")
    if _field(where, meta, "embedding_shape", list) != [rows, dim]:
        raise TableFileError(where, f"is damaged: table.json 'embedding_shape' is not [rows, dim] = [{rows}, {dim}]")
    _hex(where, meta.get("planes_sha256"), "table.json 'planes_sha256'")
    if version == 1:
        return None
    what = "table.json 'signatures'"
    sig = _field(where, meta, "signatures", dict)
    if sig.get("dtype") != "<u8" or sig.get("shape") != [rows, words]:
        raise TableFileError(where, f"is damaged: {what} does not describe ({rows}, {words}) <u8 signatures")
    data = _field(where, sig, "data_bytes", int, what)
    offset = _field(where, sig, "header_bytes", int, what)
    _hex(where, sig.get("header_sha256"), f"{what} 'header_sha256'")
    check = _field(where, sig, "checksum", dict, what)
    if check.get("algorithm") != ALGORITHM:
        raise TableFileError(
            where, f"uses checksum algorithm {check.get('algorithm')!r}; this etaretrieval reads {ALGORITHM!r}"
        )
    block = _field(where, check, "block_bytes", int, "table.json 'checksum'")
    blocks = _field(where, check, "blocks", list, "table.json 'checksum'")
    if data != rows * words * 8 or block < 1 or len(blocks) != -(-data // block):
        raise TableFileError(where, f"is damaged: {what} has inconsistent sizes")
    return Layout(rows, words, offset, block, [_hex(where, b, "a block digest") for b in blocks])


def _npy_fields(where: Path, name: str, f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset from a ``.npy`` header; a damaged header is named."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # NumPy parses the header with tokenize and ast: a damaged one fails in many ways
        problem = f"is damaged: {name} has no readable .npy header ({type(exc).__name__}: {exc})"
        raise TableFileError(where, problem) from None
    return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()


@contextlib.contextmanager
def _directory(where: Path) -> Iterator[int | None]:
    """A descriptor of the table directory (None where ``dir_fd`` is unsupported); its errors named."""
    if not (hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd):
        if not where.is_dir():
            raise TableFileError(where, "does not exist" if not where.exists() else "is a file, not a table directory")
        yield None
        return
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise TableFileError(where, "does not exist: no such directory") from None
    except NotADirectoryError:
        raise TableFileError(
            where, "is a file, not a table directory: pass the directory SignatureTable.save wrote"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _open(where: Path, directory: int | None, name: str) -> BinaryIO:
    try:
        if directory is None:
            return open(where / name, "rb")
        return os.fdopen(os.open(name, os.O_RDONLY, dir_fd=directory), "rb")
    except FileNotFoundError:
        if directory is not None and _replaced(where, directory):
            raise _Replaced from None
        problem = "holds no saved SignatureTable (no table.json); write one with SignatureTable.save" \
            if name == META else f"is incomplete: {name} is missing"
        raise TableFileError(where, problem) from None
    except IsADirectoryError:
        raise TableFileError(where, f"is damaged: {name} is a directory") from None


def _replaced(where: Path, directory: int) -> bool:
    """Whether the directory now at ``where`` is another one than the one open (a save swapped it)."""
    try:
        return os.stat(where).st_ino != os.fstat(directory).st_ino
    except OSError:
        return True


def _read_meta(where: Path, directory: int | None) -> dict[str, Any]:
    with _open(where, directory, META) as f:
        text = f.read(MAX_META_BYTES + 1)
    if len(text) > MAX_META_BYTES:
        raise TableFileError(where, f"is damaged: table.json is larger than {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise TableFileError(where, "is damaged: table.json is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TableFileError(where, f"is damaged: table.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TableFileError(where, "is not a SignatureTable: table.json does not describe one")
    return meta


def _read_planes(where: Path, directory: int | None, meta: dict[str, Any]) -> np.ndarray:
    with _open(where, directory, PLANES) as f:
        shape, fortran, dtype, offset = _npy_fields(where, PLANES, f)
        want = (meta["dim"], meta["bits"])
        if dtype != np.dtype("<f4") or shape != want or fortran:
            raise TableFileError(where, f"is damaged: planes.npy holds {dtype} {shape}, table.json says <f4 {want}")
        size, expected = os.fstat(f.fileno()).st_size, offset + 4 * want[0] * want[1]
        if size != expected:
            raise TableFileError(where, f"is damaged: planes.npy has {size} bytes, its header says {expected}")
        planes = np.empty(want, dtype="<f4")
        _read_exact(f.fileno(), planes.reshape(-1).data.cast("B"), offset)
    if fingerprint(planes) != meta["planes_sha256"]:
        raise TableFileError(where, "is damaged: planes.npy does not match its fingerprint in table.json")
    return planes


def _signatures_layout(where: Path, f: BinaryIO, layout: Layout | None, meta: dict[str, Any]) -> Layout:
    """Check the size and the header of ``signatures.npy`` against the description; the data's layout."""
    rows, words = meta["rows"], meta["words"]
    size = os.fstat(f.fileno()).st_size
    if layout is not None:
        want = layout.offset + rows * words * 8
        if size != want:
            what = "truncated" if size < want else "longer than table.json says"
            raise TableFileError(where, f"is damaged: signatures.npy is {what} ({size} bytes; table.json says {want})")
        if _digest(f.read(layout.offset)) != meta["signatures"]["header_sha256"]:
            raise TableFileError(where, "is damaged: the .npy header of signatures.npy does not match its digest")
        f.seek(0)
    shape, fortran, dtype, offset = _npy_fields(where, SIGNATURES, f)
    if dtype != np.dtype("<u8") or shape != (rows, words) or fortran:
        raise TableFileError(
            where, f"is damaged: signatures.npy holds {dtype} {shape} (Fortran order {fortran}), "
            f"table.json says <u8 ({rows}, {words})"
        )
    want = offset + rows * words * 8
    if size != want:
        what = "truncated" if size < want else "longer than its header says"
        raise TableFileError(where, f"is damaged: signatures.npy is {what} ({size} bytes; its header says {want})")
    return layout if layout is not None else Layout(rows, words, offset)


def _read_exact(fd: int, into: memoryview, at: int) -> None:
    done = 0
    while done < len(into):
        n = os.preadv(fd, [into[done:]], at + done)
        if n == 0:
            raise EOFError
        done += n


class Verification:
    """One check of a table file's data against its block digests: run now, or in a daemon thread.

    It reads a descriptor of the file opened at load (the same inode even if
    the table is replaced meanwhile), closed when the check ends or the
    table is dropped. ``into``, when given, receives the data as they are
    read (a load without memory map), so reading and checking are one pass.
    """

    def __init__(self, where: Path, f: BinaryIO, layout: Layout) -> None:
        self.where, self.layout = where, layout
        self.fd = os.dup(f.fileno())
        self._close = weakref.finalize(self, os.close, self.fd)
        self.done = threading.Event()
        self.error: TableFileError | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _check_block(self, i: int, into: memoryview | None, scratch: threading.local) -> bool:
        """Whether block ``i`` matches its digest, read in pieces of at most :data:`READ_BYTES` (bounded memory)."""
        lay = self.layout
        start = i * lay.block
        stop = min(start + lay.block, lay.rows * lay.words * 8)
        digest = hashlib.new(ALGORITHM)
        for a in range(start, stop, READ_BYTES):
            n = min(READ_BYTES, stop - a)
            if into is not None:
                buf = into[a : a + n]
            else:
                if getattr(scratch, "buf", None) is None:
                    scratch.buf = memoryview(bytearray(READ_BYTES))
                buf = scratch.buf[:n]
            try:
                _read_exact(self.fd, buf, lay.offset + a)
            except EOFError:  # the file became shorter since it was opened
                return False
            digest.update(buf)
        return bool(digest.hexdigest() == lay.digests[i])

    def run(self, into: memoryview | None = None, *, log: bool = False) -> None:
        """Check every block (in threads); record the outcome; raise :class:`TableFileError` on a mismatch.

        With ``log``, a failure is also logged (to ``etaretrieval``) before the check counts as done.
        """
        lay = self.layout
        try:
            scratch = threading.local()
            with ThreadPoolExecutor(min(_threads(), max(1, len(lay.digests)))) as pool:
                good = list(pool.map(lambda i: self._check_block(i, into, scratch), range(len(lay.digests))))
            bad = [i for i, ok in enumerate(good) if not ok]
            if bad:
                row_bytes = lay.words * 8
                first = bad[0] * lay.block
                last = min(first + lay.block, lay.rows * row_bytes) - 1
                self.error = TableFileError(
                    self.where,
                    f"is damaged: signatures.npy does not match its checksums in {len(bad)} of "
                    f"{len(lay.digests)} blocks (first: block {bad[0]}, rows {first // row_bytes}.."
                    f"{last // row_bytes}); copy the table again or save it again",
                )
        except OSError as exc:
            self.error = TableFileError(self.where, f"could not be verified: reading signatures.npy failed ({exc})")
        finally:
            if log and self.error is not None:  # nobody may be waiting: say it where a server's operator looks
                logging.getLogger("etaretrieval").error("%s", self.error)
            self._close()
            self.done.set()
        if self.error is not None:
            raise self.error

    def _claim(self) -> bool:
        """Whether the check was neither started nor done, marking it started by the calling thread."""
        with self._lock:
            if self._thread is not None or self.done.is_set():
                return False
            self._thread = threading.current_thread()
            return True

    def start(self) -> None:
        """Run the check in a daemon thread (once); a failure is logged and kept for :meth:`wait`."""
        if self._claim():
            self._thread = threading.Thread(target=self._background, name="etaretrieval-verify", daemon=True)
            self._thread.start()

    def _background(self) -> None:
        with contextlib.suppress(TableFileError):  # kept for wait(), and logged
            self.run(log=True)

    def wait(self, timeout: float | None) -> bool:
        """Check (in this thread if nobody started it and ``timeout`` is None), or wait up to ``timeout`` seconds.

        True once verified, False if still running after ``timeout``; a
        :class:`TableFileError` for a mismatch, each time it is asked.
        """
        if timeout is None and self._claim():
            self.run()
        else:
            self.start()
            if not self.done.wait(timeout):
                return False
        if self.error is not None:
            raise TableFileError(self.where, self.error.problem) from None
        return True


@dataclass
class TableFile:
    """What :func:`open_table` read: the description, the planes, the signatures and their check."""

    path: Path
    meta: dict[str, Any]
    planes: np.ndarray
    signatures: np.ndarray
    verification: Verification | None  # None for version 1 (no checksums)


def open_table(where: Path, *, mmap: bool, writeable: bool, verify: bool | str) -> TableFile:
    """Open the table at ``where``: ``verify=True`` checks the data first, ``"background"`` starts a thread."""
    for _ in range(3):
        try:
            return _open_table(where, mmap=mmap, writeable=writeable, verify=verify)
        except _Replaced:
            continue
    raise TableFileError(where, "was replaced by another save three times while it was read; open it again")


def _open_table(where: Path, *, mmap: bool, writeable: bool, verify: bool | str) -> TableFile:
    with _directory(where) as directory:
        meta = _read_meta(where, directory)
        layout = _check_meta(where, meta)
        if verify and layout is None:
            raise TableFileError(
                where, "has format version 1, which carries no checksums, so it cannot be verified: "
                "load it without verify and save it again (SignatureTable.load(path).save(path))"
            )
        planes = _read_planes(where, directory, meta)
        f = _open(where, directory, SIGNATURES)
    try:
        layout = _signatures_layout(where, f, layout, meta)
        check = Verification(where, f, layout) if meta["version"] == VERSION else None
        rows, words = layout.rows, layout.words
        if rows * words == 0:
            signatures = np.zeros((rows, words), dtype=np.uint64)
        elif mmap:
            mode: Literal["c", "r"] = "c" if writeable else "r"
            mapped = np.memmap(cast(Any, f), dtype="<u8", mode=mode, offset=layout.offset, shape=(rows, words))
            signatures = mapped.view(np.ndarray)  # a plain array viewing the map (the map stays open)
        else:
            signatures = np.empty((rows, words), dtype="<u8")
            into = signatures.reshape(-1).data.cast("B")
            if verify is True and check is not None:
                check.run(into)  # read and check in one pass
            else:
                _read_exact(f.fileno(), into, layout.offset)
    except EOFError:
        raise TableFileError(where, "is damaged: signatures.npy became shorter while it was read") from None
    finally:
        f.close()
    if check is not None and verify is True and not check.done.is_set():
        check.run()
    elif check is not None and verify == "background":
        check.start()
    return TableFile(where, meta, planes, signatures, check)
