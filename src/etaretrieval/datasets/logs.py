"""Read (user, item, timestamp[, category]) interaction logs from the common public formats.

One entry point, :func:`read_log`, returns an :class:`InteractionLog`: int64
arrays re-indexed to dense ids (users ``0..U-1``, items ``1..N`` with ``0``
left for padding, categories ``1..C`` with ``0`` for unknown) and the original
ids. Files are parsed by pyarrow's multi-threaded CSV reader (in 64 MiB blocks,
filtering each block as it arrives) or its Parquet reader; ids are re-indexed
by a presence table (dense integer ids) or a sort (anything else), never by a
Python loop over rows. :meth:`InteractionLog.from_arrays` builds a log from
arrays already in memory with numpy alone.

pyarrow is an optional dependency (``pip install 'etaretrieval[data]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

__all__ = ["InteractionLog", "read_log", "LOG_FORMATS"]

#: Formats :func:`read_log` understands (``format="auto"`` picks one from the file name).
LOG_FORMATS = ("movielens-100k", "movielens-1m", "movielens-csv", "taobao", "recbole", "csv", "parquet")

Format = Literal["auto", "movielens-100k", "movielens-1m", "movielens-csv", "taobao", "recbole", "csv", "parquet"]
PathLike = Union[str, "os.PathLike[str]"]

#: The 19 genre flags of MovieLens 100K's ``u.item``, in file order (``u.genre``).
_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")

_ROLES = ("user", "item", "time", "category", "behavior")
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4", ".xz")
_BLOCK = 1 << 26  # bytes of CSV parsed per block
# RecBole: fields of an ``.item`` file that may hold an item's category, tried in this order.
_RECBOLE_CATEGORY_FIELDS = ("class", "categories", "category", "genre", "genres", "cate_id", "category_id")


def _pyarrow() -> Any:
    try:
        import pyarrow  # type: ignore[import-untyped]
        import pyarrow.compute  # type: ignore[import-untyped]
        import pyarrow.csv  # type: ignore[import-untyped]
        import pyarrow.parquet  # type: ignore[import-untyped]
    except ImportError as err:
        raise ImportError(
            "read_log needs pyarrow to parse log files: pip install 'etaretrieval[data]' (or pip install pyarrow). "
            "InteractionLog.from_arrays builds a log from arrays in memory without it."
        ) from err
    return pyarrow


# --------------------------------------------------------------------------- re-indexing


def _unique_inverse(values: np.ndarray) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """``(codes, vocab)`` by one stable argsort (:func:`numpy.unique` can be many times slower on large int64)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.ones(ordered.shape[0], dtype=np.bool_)
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    codes = np.empty(ordered.shape[0], dtype=np.int64)
    codes[order] = np.cumsum(new, dtype=np.int64) - 1
    return codes, ordered[new]


def _factorize_ints(chunks: Sequence[np.ndarray]) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """``(codes, vocab)`` of integer ids given in chunks (arrow blocks, no concatenated copy when dense).

    Dense ids (range at most ``4 n + 2**20``) go through a presence table,
    ``O(n + range)`` without a sort; sparse ones through :func:`numpy.unique`.
    """
    dtype = chunks[0].dtype if chunks else np.dtype(np.int64)
    chunks = [c for c in chunks if c.size]
    total = sum(c.size for c in chunks)
    if not total:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype)
    lo, hi = min(int(c.min()) for c in chunks), max(int(c.max()) for c in chunks)
    span = hi - lo + 1
    if span <= 4 * total + (1 << 20):
        present = np.zeros(span, dtype=np.bool_)
        for c in chunks:
            present[c if lo == 0 else c - lo] = True
        lookup = np.cumsum(present, dtype=np.int64) - 1
        codes = np.empty(total, dtype=np.int64)
        at = 0
        for c in chunks:
            codes[at:at + c.size] = lookup[c if lo == 0 else c - lo]
            at += c.size
        return codes, np.flatnonzero(present).astype(dtype) + dtype.type(lo)
    return _unique_inverse(np.concatenate(chunks))


def _factorize_numpy(values: np.ndarray, name: str) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """``(codes, vocab)``: ``vocab`` sorted unique values, ``values == vocab[codes]``."""
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape}")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise ValueError(f"{name} holds floats that are not whole numbers (ids must be integers or strings)")
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        return _factorize_ints([values])
    return _unique_inverse(values)


def _as_keys(strings: Any) -> np.ndarray:
    """A pyarrow array as numpy; strings become int64 when each is an integer written canonically.

    ``"42"`` becomes ``42``; ``"042"`` or ``"4.2"`` anywhere keep the whole
    array as strings, so two distinct strings never become one id.
    """
    pa = _pyarrow()
    pc = pa.compute
    if pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type):
        if len(strings) and pc.all(pc.match_substring_regex(strings, r"^-?[0-9]{1,18}$")).as_py():
            ints = strings.cast(pa.int64())
            if pc.all(pc.equal(ints.cast(strings.type), strings)).as_py():
                return ints.to_numpy()
        return np.asarray(strings.to_numpy(zero_copy_only=False).astype(str))
    return strings.to_numpy(zero_copy_only=False)


def _factorize_arrow(column: Any, name: str, *, allow_null: bool = False) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """``(codes, vocab)`` of an arrow column; ``-1`` codes at nulls (only with ``allow_null``)."""
    pa = _pyarrow()
    if column.null_count and not allow_null:
        raise ValueError(f"the {name} column has {column.null_count} missing values")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        if column.null_count:
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            codes = np.full(len(column), -1, dtype=np.int64)
            codes[valid], vocab = _factorize_numpy(column.drop_null().to_numpy(), name)
            return codes, vocab
        if pa.types.is_integer(column.type) and isinstance(column, pa.ChunkedArray):
            return _factorize_ints([chunk.to_numpy() for chunk in column.chunks])
        return _factorize_numpy(column.to_numpy(), name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise TypeError(f"the {name} column must hold integers or strings, got arrow type {column.type}")
    encoded = column.combine_chunks().dictionary_encode() if isinstance(column, pa.ChunkedArray) \
        else column.dictionary_encode()
    vocab = _as_keys(encoded.dictionary)
    order = np.argsort(vocab, kind="stable")
    rank = np.empty(order.size + 1, dtype=np.int64)
    rank[order] = np.arange(order.size)
    rank[-1] = -1  # nulls
    indices = encoded.indices.fill_null(order.size).to_numpy().astype(np.int64)
    return rank[indices], vocab[order]


def _as_int64_time(column: Any) -> npt.NDArray[np.int64]:
    pa = _pyarrow()
    if column.null_count:
        raise ValueError(f"the time column has {column.null_count} missing values")
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date(t):  # -> whole seconds
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
        if pa.types.is_date32(t):
            return column.cast(pa.int32()).to_numpy().astype(np.int64) * 86400
        ticks = column.cast(pa.int64()).to_numpy()
        return ticks // (1000 if pa.types.is_date64(t) else per_second[t.unit])
    if pa.types.is_integer(t):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(t):
        values = column.to_numpy()
        if not np.isfinite(values).all():
            raise ValueError("the time column holds NaN or infinite values")
        return np.rint(values).astype(np.int64)
    raise TypeError(f"the time column must hold numbers, timestamps or dates, got arrow type {t}")


def _check_ids(name: str, a: np.ndarray, size: int, lo: int, hi: int) -> None:
    if a.ndim != 1 or a.shape[0] != size:
        raise ValueError(f"{name} must have shape (R,) = ({size},), got shape {a.shape}")
    if a.dtype != np.int64:
        raise ValueError(f"{name} must have dtype int64, got {a.dtype}")
    if size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name} must hold ids in [{lo}, {hi}], got range [{a.min()}, {a.max()}]")


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class InteractionLog:
    """A (user, item, timestamp[, category]) interaction log with dense ids.

    Row ``r`` says user ``user[r]`` interacted with item ``item[r]`` at time
    ``timestamp[r]``; rows keep the file's order (no sorting).

    Attributes
    ----------
    user : numpy.ndarray
        ``(R,)`` int64 users ``0..U-1``.
    item : numpy.ndarray
        ``(R,)`` int64 items ``1..N`` (``0`` is left for padding).
    timestamp : numpy.ndarray
        ``(R,)`` int64 times: integer columns as they are (seconds for
        MovieLens and Taobao), float columns rounded to whole numbers, arrow
        timestamp and date columns (and ISO 8601 strings in CSV files) in
        whole seconds since the epoch.
    category : numpy.ndarray or None
        ``(R,)`` int64 categories ``1..C`` of the rows' items, ``0`` where
        unknown; ``None`` when the log has none.
    user_ids : numpy.ndarray
        ``(U,)`` original user ids, sorted: user ``u`` is ``user_ids[u]``.
    item_ids : numpy.ndarray
        ``(N,)`` original item ids, sorted: item ``i`` is ``item_ids[i - 1]``.
    category_ids : numpy.ndarray or None
        ``(C,)`` original category ids or names, sorted: category ``c`` is
        ``category_ids[c - 1]``.

    Examples
    --------
    >>> from etaretrieval.datasets import InteractionLog
    >>> log = InteractionLog.from_arrays(
    ...     user=["bob", "amy", "bob"], item=[30, 10, 10],
    ...     timestamp=[5, 7, 9], category=["x", "y", "y"])
    >>> log.user.tolist(), log.item.tolist(), log.category.tolist()
    ([1, 0, 1], [2, 1, 1], [1, 2, 2])
    >>> log.user_ids.tolist(), log.item_ids.tolist(), log.n_items, len(log)
    (['amy', 'bob'], [10, 30], 2, 3)
    >>> log.item_categories().tolist()  # padding, item 1 (10), item 2 (30)
    [0, 2, 1]
    """

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    timestamp: npt.NDArray[np.int64]
    category: Optional[npt.NDArray[np.int64]]
    user_ids: np.ndarray
    item_ids: np.ndarray
    category_ids: Optional[np.ndarray]

    def __post_init__(self) -> None:
        rows = self.user.shape[0] if self.user.ndim == 1 else -1
        _check_ids("user", self.user, rows, 0, self.n_users - 1)
        _check_ids("item", self.item, rows, 1, self.n_items)
        _check_ids("timestamp", self.timestamp, rows, np.iinfo(np.int64).min, np.iinfo(np.int64).max)
        if (self.category is None) != (self.category_ids is None):
            raise ValueError("category and category_ids must both be given or both be None")
        if self.category is not None:
            _check_ids("category", self.category, rows, 0, self.n_categories)

    @property
    def n_users(self) -> int:
        """Number of users ``U``."""
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items ``N`` (ids ``1..N``)."""
        return int(self.item_ids.shape[0])

    @property
    def n_categories(self) -> int:
        """Number of categories ``C`` (ids ``1..C``), ``0`` without categories."""
        return 0 if self.category_ids is None else int(self.category_ids.shape[0])

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def item_categories(self) -> npt.NDArray[np.int64]:
        """``(N + 1,)`` int64 category of every item id: the category of its first row in the log.

        ``0`` for the padding id ``0``, for items whose category is unknown and
        for every item of a log without categories.
        """
        out = np.zeros(self.n_items + 1, dtype=np.int64)
        if self.category is None or not len(self):
            return out
        first = np.full(self.n_items + 1, len(self), dtype=np.int64)
        np.minimum.at(first, self.item, np.arange(len(self), dtype=np.int64))
        seen = first < len(self)
        out[seen] = self.category[first[seen]]
        return out

    @classmethod
    def from_arrays(
        cls,
        user: npt.ArrayLike,
        item: npt.ArrayLike,
        timestamp: npt.ArrayLike,
        category: Optional[npt.ArrayLike] = None,
    ) -> InteractionLog:
        """Re-index arrays of original ids (integers or strings) into a log. Numpy only.

        Parameters
        ----------
        user, item : array_like
            ``(R,)`` original user and item ids.
        timestamp : array_like
            ``(R,)`` integer (or whole-number float) times.
        category : array_like, optional
            ``(R,)`` original categories of the rows' items.

        Returns
        -------
        InteractionLog

        Examples
        --------
        >>> from etaretrieval.datasets import InteractionLog
        >>> log = InteractionLog.from_arrays([7, 7, 3], [100, 200, 100], [1, 2, 3])
        >>> log.user.tolist(), log.item.tolist(), log.user_ids.tolist()
        ([1, 1, 0], [1, 2, 1], [3, 7])
        """
        arrays = {"user": np.asarray(user), "item": np.asarray(item), "timestamp": np.asarray(timestamp)}
        if category is not None:
            arrays["category"] = np.asarray(category)
        rows = arrays["user"].shape[0] if arrays["user"].ndim == 1 else -1
        for name, a in arrays.items():
            if a.ndim != 1 or a.shape[0] != rows:
                raise ValueError(f"{name} must have shape (R,) like user, got shape {a.shape}")
        t = arrays["timestamp"]
        if t.dtype.kind == "f":
            if not np.isfinite(t).all():
                raise ValueError("timestamp holds NaN or infinite values")
            t = np.rint(t)
        elif t.dtype.kind not in "iu" and t.size:
            raise ValueError(f"timestamp must hold numbers, got dtype {t.dtype}")
        users, user_ids = _factorize_numpy(arrays["user"], "user")
        items, item_ids = _factorize_numpy(arrays["item"], "item")
        cats, cat_ids = (None, None) if category is None else _factorize_numpy(arrays["category"], "category")
        return cls(
            user=users, item=items + 1, timestamp=t.astype(np.int64), category=None if cats is None else cats + 1,
            user_ids=user_ids, item_ids=item_ids, category_ids=cat_ids,
        )


# --------------------------------------------------------------------------- reading files


def _csv_schema_names(path: Path, *, delimiter: str, quote: bool, encoding: str) -> list[str]:
    """Column names of a headed CSV file (reads its first block only)."""
    pa = _pyarrow()
    reader = pa.csv.open_csv(
        str(path),
        read_options=pa.csv.ReadOptions(encoding=encoding, block_size=1 << 20),
        parse_options=pa.csv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False),
    )
    names = list(reader.schema.names)
    reader.close()
    return names


def _read_csv(
    path: Path,
    *,
    names: Optional[Sequence[str]],
    include: Sequence[str],
    types: Mapping[str, Any],
    delimiter: str,
    quote: bool = True,
    encoding: str = "utf8",
    skip_rows: int = 0,
    keep: Optional[tuple[str, Sequence[str]]] = None,
) -> Any:
    """Stream a CSV file block by block into an arrow table of the ``include`` columns.

    ``names`` are the column names of a file without header (``None``: the
    first row is the header); ``keep = (column, values)`` keeps only the rows
    whose ``column`` is one of ``values``, block by block.
    """
    pa = _pyarrow()
    pc = pa.compute
    columns = list(include) + ([keep[0]] if keep is not None and keep[0] not in include else [])
    reader = pa.csv.open_csv(
        str(path),
        read_options=pa.csv.ReadOptions(column_names=None if names is None else list(names), skip_rows=skip_rows,
                                        encoding=encoding, block_size=_BLOCK),
        parse_options=pa.csv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False),
        convert_options=pa.csv.ConvertOptions(include_columns=columns, strings_can_be_null=True, null_values=[""],
                                              column_types={k: v for k, v in types.items() if k in columns}),
    )
    value_set = None if keep is None else pa.array(list(keep[1]), type=pa.string())
    batches = []
    for batch in reader:
        if value_set is not None:
            batch = batch.filter(pc.is_in(batch.column(keep[0]), value_set=value_set))  # type: ignore[index]
        batches.append(batch.select(list(include)))
    schema = reader.schema
    return pa.Table.from_batches(batches, schema=pa.schema([schema.field(c) for c in include]))


def _require(available: Sequence[str], wanted: Mapping[str, str], source: str) -> None:
    missing = {role: col for role, col in wanted.items() if col not in available}
    if missing:
        raise KeyError(
            f"columns: {', '.join(f'{role}={col!r}' for role, col in missing.items())} not found in {source}; "
            f"its columns are {list(available)}"
        )


def _check_columns(columns: Optional[Mapping[str, str]], fmt: str) -> dict[str, str]:
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise TypeError(f"columns must be a mapping of role to column name, got {type(columns).__name__}")
    unknown = set(columns) - set(_ROLES)
    if unknown:
        raise ValueError(f"columns has unknown roles {sorted(unknown)}; the roles are {list(_ROLES)}")
    return {k: str(v) for k, v in columns.items()}


def _join_categories(item_ids: np.ndarray, keys: np.ndarray, names: Any) -> tuple[npt.NDArray[np.int64], np.ndarray]:
    """``(per_item, category_ids)``: the category (``1..C``, ``0`` unknown) of each log item ``0..N``.

    ``keys`` are the original item ids of an item file and ``names`` (arrow,
    null where unknown) their categories; only categories of items that occur
    in the log are numbered.
    """
    if keys.dtype.kind != item_ids.dtype.kind:  # e.g. integer ids in the log, string ids in the item file
        keys, item_ids = keys.astype(str), item_ids.astype(str)
    codes, vocab = _factorize_arrow(names, "category", allow_null=True)
    per_item = np.zeros(item_ids.shape[0] + 1, dtype=np.int64)
    if keys.size:
        order = np.argsort(keys, kind="stable")
        pos = np.minimum(np.searchsorted(keys[order], item_ids), keys.size - 1)
        found = keys[order][pos] == item_ids
        per_item[1:][found] = codes[order[pos[found]]] + 1
    used = np.zeros(vocab.size + 1, dtype=np.bool_)
    used[per_item] = True
    used[0] = False
    return (np.cumsum(used, dtype=np.int64) * used)[per_item], vocab[used[1:]]


def _columns(table: Any, roles: Mapping[str, str]) -> dict[str, Any]:
    """The role -> arrow column dict of a table (the table itself can then be released)."""
    return {role: table.column(name) for role, name in roles.items() if role != "behavior"}


def _log_from_columns(columns: dict[str, Any], item_categories: Optional[tuple[np.ndarray, Any]] = None,
                      ) -> InteractionLog:
    """Re-index arrow columns (role -> column) into a log, popping each column once converted.

    Popping releases each raw column as soon as its int64 codes exist, so
    the peak memory is the log plus one raw column. ``item_categories =
    (keys, names)`` gives each original item id in ``keys`` a category name
    (arrow array, null where unknown) instead of a category column.
    """
    users, user_ids = _factorize_arrow(columns.pop("user"), "user")
    items, item_ids = _factorize_arrow(columns.pop("item"), "item")
    items += 1
    times = _as_int64_time(columns.pop("time"))
    category = category_ids = None
    if "category" in columns:
        category, category_ids = _factorize_arrow(columns.pop("category"), "category", allow_null=True)
        category += 1
    elif item_categories is not None:
        per_item, category_ids = _join_categories(item_ids, *item_categories)
        category = per_item[items]
    _pyarrow().default_memory_pool().release_unused()  # hand the parsed blocks back to the system
    return InteractionLog(user=users, item=items, timestamp=times, category=category,
                          user_ids=user_ids, item_ids=item_ids, category_ids=category_ids)


def _companion(path: Path, name: str, item_file: Union[PathLike, bool, None]) -> Optional[Path]:
    """The item file that gives categories: ``item_file``, or ``name`` next to ``path`` if it exists."""
    if item_file is False:
        return None
    if item_file is None or item_file is True:
        found = path.with_name(name)
        if found.exists():
            return found
        if item_file is True:
            raise FileNotFoundError(f"item_file=True but {found} does not exist")
        return None
    found = Path(item_file)
    if not found.exists():
        raise FileNotFoundError(f"item_file {found} does not exist")
    return found


def _lines(path: Path, encoding: str) -> Any:
    """Every line of a text file as one arrow string column ``line``."""
    pa = _pyarrow()
    return pa.csv.read_csv(
        str(path),
        read_options=pa.csv.ReadOptions(column_names=["line"], encoding=encoding),
        parse_options=pa.csv.ParseOptions(delimiter="\x1f", quote_char=False),
        convert_options=pa.csv.ConvertOptions(column_types={"line": pa.string()}),
    ).column("line")


_ML_ROLES = {"user": "user", "item": "item", "time": "time"}


def _read_movielens_100k(path: Path, item_file: Union[PathLike, bool, None]) -> InteractionLog:
    pa = _pyarrow()
    genres_at = _companion(path, "u.item", item_file)
    item_categories = None
    if genres_at is not None:
        flags = [f"g{i}" for i in range(len(_ML100K_GENRES))]
        movies = _read_csv(genres_at, names=["item", "title", "release", "video", "url", *flags],
                           include=["item", *flags], types={"item": pa.int64(), **{f: pa.int8() for f in flags}},
                           delimiter="|", quote=False, encoding="latin1")
        onehot = np.stack([movies.column(f).to_numpy() for f in flags[1:]], axis=1).astype(bool)
        first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), -1)
        names = np.asarray(_ML100K_GENRES[1:], dtype=object)[np.maximum(first, 0)]
        item_categories = (movies.column("item").to_numpy(), pa.array(names, type=pa.string(), mask=first < 0))
    columns = _columns(_read_csv(path, names=["user", "item", "rating", "time"], include=["user", "item", "time"],
                                 types={"user": pa.int64(), "item": pa.int64(), "time": pa.int64()}, delimiter="\t"),
                       _ML_ROLES)
    return _log_from_columns(columns, item_categories)


def _first_genre(genres: Any) -> Any:
    """First of ``A|B|C`` genre lists as arrow strings, null for MovieLens' ``(no genres listed)``."""
    pa = _pyarrow()
    pc = pa.compute
    first = pc.list_element(pc.split_pattern(genres, "|"), 0)
    return pc.if_else(pc.equal(first, "(no genres listed)"), pa.scalar(None, pa.string()), first)


def _read_movielens_1m(path: Path, item_file: Union[PathLike, bool, None]) -> InteractionLog:
    pa = _pyarrow()
    pc = pa.compute
    movies_at = _companion(path, "movies.dat", item_file)
    item_categories = None
    if movies_at is not None:
        lines = _lines(movies_at, "latin1")
        lines = lines.filter(pc.not_equal(pc.utf8_trim_whitespace(lines), ""))
        parts = pc.extract_regex(lines, r"^(?P<item>[0-9]+)::.*::(?P<genres>[^:]*)$")
        if parts.null_count:
            bad = lines.filter(pc.is_null(parts))[0].as_py()
            raise ValueError(f"{movies_at}: expected lines 'MovieID::Title::Genre1|Genre2', got {bad!r}")
        parts = parts.combine_chunks()
        item_categories = (parts.field("item").cast(pa.int64()).to_numpy(), _first_genre(parts.field("genres")))
    # ``a::b::c::d`` is seven ':'-separated fields with empty ones between.
    columns = _columns(_read_csv(path, names=["user", "_1", "item", "_3", "rating", "_5", "time"],
                                 include=["user", "item", "time"],
                                 types={"user": pa.int64(), "item": pa.int64(), "time": pa.int64()}, delimiter=":"),
                       _ML_ROLES)
    return _log_from_columns(columns, item_categories)


def _read_movielens_csv(path: Path, item_file: Union[PathLike, bool, None]) -> InteractionLog:
    pa = _pyarrow()
    roles = {"user": "userId", "item": "movieId", "time": "timestamp"}
    _require(_csv_schema_names(path, delimiter=",", quote=True, encoding="utf8"), roles, str(path))
    movies_at = _companion(path, "movies.csv", item_file)
    item_categories = None
    if movies_at is not None:
        _require(_csv_schema_names(movies_at, delimiter=",", quote=True, encoding="utf8"),
                 {"item": "movieId", "category": "genres"}, str(movies_at))
        movies = _read_csv(movies_at, names=None, include=["movieId", "genres"],
                           types={"movieId": pa.int64(), "genres": pa.string()}, delimiter=",")
        item_categories = (movies.column("movieId").to_numpy(), _first_genre(movies.column("genres")))
    columns = _columns(_read_csv(path, names=None, include=list(roles.values()),
                                 types={"userId": pa.int64(), "movieId": pa.int64(), "timestamp": pa.int64()},
                                 delimiter=","), roles)
    return _log_from_columns(columns, item_categories)


def _read_taobao(path: Path, behaviors: Optional[Sequence[str]]) -> InteractionLog:
    pa = _pyarrow()
    names = ["user", "item", "category", "behavior", "time"]
    columns = _columns(_read_csv(path, names=names, include=["user", "item", "category", "time"],
                                 types={"user": pa.int64(), "item": pa.int64(), "category": pa.int64(),
                                        "behavior": pa.string(), "time": pa.int64()},
                                 delimiter=",", keep=None if behaviors is None else ("behavior", behaviors)),
                       {"user": "user", "item": "item", "time": "time", "category": "category"})
    return _log_from_columns(columns)


def _recbole_header(path: Path) -> tuple[list[str], list[str]]:
    """Field names and types of a RecBole atomic file's ``name:type`` header."""
    fields = _csv_schema_names(path, delimiter="\t", quote=False, encoding="utf8")
    header = "\t".join(fields)
    names, types = [], []
    for field in fields:
        name, sep, kind = field.rpartition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(f"{path}: expected a RecBole header of tab-separated 'name:type' fields "
                             f"(type token, token_seq, float or float_seq), got {header!r}")
        names.append(name)
        types.append(kind)
    return names, types


def _read_recbole(path: Path, columns: dict[str, str], item_file: Union[PathLike, bool, None],
                  behaviors: Optional[Sequence[str]]) -> InteractionLog:
    pa = _pyarrow()
    names, kinds = _recbole_header(path)
    roles = {"user": columns.get("user", "user_id"), "item": columns.get("item", "item_id"),
             "time": columns.get("time", "timestamp")}
    for role in ("category", "behavior"):
        if role in columns:
            roles[role] = columns[role]
    _require(names, roles, str(path))
    types = {n: (pa.string() if k.startswith("token") else pa.float64()) for n, k in zip(names, kinds)}
    keep = (roles["behavior"], behaviors) if "behavior" in roles and behaviors is not None else None
    item_categories = None
    items_at = None if "category" in roles else _companion(
        path, _strip_compression(path.name).rsplit(".", 1)[0] + ".item", item_file)
    if items_at is not None:
        item_names, _ = _recbole_header(items_at)
        item_field = roles["item"]
        _require(item_names, {"item": item_field}, str(items_at))
        candidates = [c for c in _RECBOLE_CATEGORY_FIELDS if c in item_names]
        if candidates:
            items = _read_csv(items_at, names=item_names, include=[item_field, candidates[0]],
                              types={item_field: pa.string(), candidates[0]: pa.string()}, delimiter="\t",
                              quote=False, skip_rows=1)
            item_categories = (_as_keys(items.column(item_field).combine_chunks()),
                               _first_token(items.column(candidates[0])))
    columns = _columns(_read_csv(path, names=names, include=[roles[r] for r in ("user", "item", "time", "category")
                                                             if r in roles],
                                 types=types, delimiter="\t", quote=False, skip_rows=1, keep=keep), roles)
    if "category" in columns:
        columns["category"] = _first_token(columns["category"])
    return _log_from_columns(columns, item_categories)


def _first_token(column: Any) -> Any:
    """First space-separated token of a RecBole ``token_seq`` field (null when empty)."""
    pa = _pyarrow()
    pc = pa.compute
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    first = pc.list_element(pc.split_pattern(pc.utf8_trim_whitespace(column), " "), 0)
    return pc.if_else(pc.equal(first, ""), pa.scalar(None, pa.string()), first)


def _read_named(path: Path, fmt: str, columns: dict[str, str], delimiter: Optional[str],
                behaviors: Optional[Sequence[str]]) -> InteractionLog:
    pa = _pyarrow()
    pc = pa.compute
    if not {"user", "item", "time"} <= set(columns):
        raise ValueError(f"format {fmt!r} needs columns={{'user': ..., 'item': ..., 'time': ...[, 'category': ...]}} "
                         f"naming the file's columns, got columns={columns or None!r}")
    roles: dict[str, str] = {r: columns[r] for r in ("user", "item", "time", "category") if r in columns}
    wanted = list(dict.fromkeys(roles.values()))
    filter_on = columns.get("behavior") if behaviors is not None else None
    if fmt == "parquet":
        available = pa.parquet.read_schema(str(path)).names
        _require(available, {**roles, **({"behavior": filter_on} if filter_on else {})}, str(path))
        table = pa.parquet.read_table(str(path), columns=wanted + ([filter_on] if filter_on else []))
        if filter_on:
            table = table.filter(pc.is_in(table.column(filter_on).cast(pa.string()),
                                          value_set=pa.array(list(behaviors or ()), type=pa.string())))
        columns = _columns(table, roles)
        del table
        return _log_from_columns(columns)
    sep = delimiter if delimiter is not None else ("\t" if _strip_compression(path.name).endswith(".tsv") else ",")
    available = _csv_schema_names(path, delimiter=sep, quote=True, encoding="utf8")
    _require(available, {**roles, **({"behavior": filter_on} if filter_on else {})}, str(path))
    types = {roles[r]: pa.string() for r in ("user", "item", "category") if r in roles}
    if filter_on:
        types[filter_on] = pa.string()
    return _log_from_columns(_columns(
        _read_csv(path, names=None, include=wanted, types=types, delimiter=sep,
                  keep=None if filter_on is None else (filter_on, behaviors)),  # type: ignore[arg-type]
        roles))


def _strip_compression(name: str) -> str:
    for ext in _COMPRESSED:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _detect(path: Path) -> str:
    name = _strip_compression(path.name)
    lower = name.lower()
    if lower == "u.data" or lower.endswith(".data"):
        return "movielens-100k"
    if lower.endswith(".dat"):
        return "movielens-1m"
    if lower == "ratings.csv":
        return "movielens-csv"
    if lower.startswith("userbehavior") and lower.endswith(".csv"):
        return "taobao"
    if lower.endswith(".inter"):
        return "recbole"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise ValueError(f"format='auto' cannot tell the format of {path.name!r} from its name; "
                     f"pass format= one of {list(LOG_FORMATS)}")


def read_log(
    path: PathLike,
    format: Format = "auto",
    *,
    columns: Optional[Mapping[str, str]] = None,
    item_file: Union[PathLike, bool, None] = None,
    behaviors: Optional[Sequence[str]] = ("pv",),
    delimiter: Optional[str] = None,
) -> InteractionLog:
    """Read an interaction log file into an :class:`InteractionLog` with dense ids.

    ==================  ===============================  =================================================
    ``format``          File                             Categories
    ==================  ===============================  =================================================
    ``movielens-100k``  ``u.data``: ``user item rating   first genre flagged in ``u.item`` (``|``-separated,
                        timestamp``, tab-separated       19 flags; the ``unknown`` flag counts as no genre)
    ``movielens-1m``    ``ratings.dat`` (also 10M):      first genre of ``movies.dat``
                        ``user::item::rating::time``     (``MovieID::Title::Genre1|Genre2``)
    ``movielens-csv``   ``ratings.csv`` (ml-latest,      first genre of ``movies.csv``
                        20M, 25M, 32M), with header      (``movieId,title,genres``)
                        ``userId,movieId,rating,...``
    ``taobao``          ``UserBehavior.csv``, no         the ``category_id`` column
                        header: ``user_id,item_id,
                        category_id,behavior_type,
                        timestamp``
    ``recbole``         atomic ``.inter``,               ``columns['category']`` of the ``.inter`` file,
                        tab-separated, typed header      else the first token of the ``.item`` file's
                        ``user_id:token ...``            ``class``/``categories``/``category``/``genre``...
    ``csv``             any CSV/TSV with a header        ``columns['category']`` if given
    ``parquet``         any Parquet file                 ``columns['category']`` if given
    ==================  ===============================  =================================================

    ``format="auto"`` picks by file name: ``u.data`` / ``*.data``,
    ``*.dat``, ``ratings.csv``, ``UserBehavior*.csv``, ``*.inter``,
    ``*.parquet`` / ``*.pq``, other ``*.csv`` / ``*.tsv`` / ``*.txt``; a
    ``.gz``, ``.bz2``, ``.zst``, ``.lz4`` or ``.xz`` suffix is read compressed.
    Ratings are not kept: every row is an interaction. Rows keep the file's
    order.

    Parameters
    ----------
    path : str or os.PathLike
        The log file.
    format : str, default "auto"
        One of :data:`LOG_FORMATS`, or ``"auto"``.
    columns : mapping, optional
        Role -> column name for ``csv`` and ``parquet`` (required: ``user``,
        ``item``, ``time``; optional ``category``, ``behavior``) and
        ``recbole`` (defaults ``user_id``, ``item_id``, ``timestamp``; names
        without the ``:type`` suffix). Other formats reject it.
    item_file : str, os.PathLike or bool, optional
        The file giving MovieLens genres (``u.item``, ``movies.dat``,
        ``movies.csv``) or RecBole item fields (``<name>.item``). Default: that
        file next to ``path`` if it exists, else no categories; ``False``: no
        categories; ``True``: the file next to ``path``, which must exist.
    behaviors : sequence of str or None, default ("pv",)
        Rows to keep by their behaviour: Taobao's ``behavior_type`` (``pv``
        click, ``cart``, ``fav``, ``buy``) or the column ``columns['behavior']``;
        ``None`` keeps every row. The default keeps Taobao's clicks (89 % of
        its rows), so every row is a click.
    delimiter : str, optional
        Field separator of a ``csv`` file (default ``","``, ``"\\t"`` for ``.tsv``).

    Returns
    -------
    InteractionLog

    Raises
    ------
    ImportError
        pyarrow is not installed.
    KeyError
        A column named in ``columns`` (or a format's fixed column) is missing.
    ValueError
        Unknown ``format``, ``columns`` for a format that takes none, or bad values.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from etaretrieval.datasets import read_log
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rows = ["uid,iid,ts,cat", "u1,9,100,a", "u2,9,50,b", "u1,4,70,a"]
    >>> _ = (folder / "clicks.csv").write_text("\\n".join(rows))
    >>> log = read_log(folder / "clicks.csv",
    ...                columns={"user": "uid", "item": "iid", "time": "ts",
    ...                         "category": "cat"})
    >>> log.user.tolist(), log.item.tolist(), log.timestamp.tolist()
    ([0, 1, 0], [2, 2, 1], [100, 50, 70])
    >>> log.category.tolist()
    [1, 2, 1]
    >>> log.user_ids.tolist(), log.item_ids.tolist(), log.category_ids.tolist()
    (['u1', 'u2'], [4, 9], ['a', 'b'])
    """
    path = Path(os.fspath(path)).expanduser()
    if format not in ("auto", *LOG_FORMATS):
        raise ValueError(f"format must be 'auto' or one of {list(LOG_FORMATS)}, got {format!r}")
    if behaviors is not None and (isinstance(behaviors, str) or not all(isinstance(b, str) for b in behaviors)):
        raise TypeError(f"behaviors must be a sequence of strings or None, got {behaviors!r}")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    _pyarrow()
    fmt = _detect(path) if format == "auto" else format
    cols = _check_columns(columns, fmt)
    if cols and fmt not in ("csv", "parquet", "recbole"):
        raise ValueError(f"columns applies to the 'csv', 'parquet' and 'recbole' formats, not {fmt!r}")
    if delimiter is not None and fmt != "csv":
        raise ValueError(f"delimiter applies to the 'csv' format only, not {fmt!r}")
    if not path.exists():
        raise FileNotFoundError(f"path {path} does not exist")
    if fmt == "movielens-100k":
        return _read_movielens_100k(path, item_file)
    if fmt == "movielens-1m":
        return _read_movielens_1m(path, item_file)
    if fmt == "movielens-csv":
        return _read_movielens_csv(path, item_file)
    if fmt == "taobao":
        return _read_taobao(path, behaviors)
    if fmt == "recbole":
        return _read_recbole(path, cols, item_file, behaviors)
    return _read_named(path, fmt, cols, delimiter, behaviors)
