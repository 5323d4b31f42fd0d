"""read_log on small fixture files of every format, and build_samples against a plain per-user loop."""

from __future__ import annotations

import gzip
import math
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etaretrieval.datasets import LOG_FORMATS, InteractionLog, SequenceSamples, build_samples, read_log
from etaretrieval.datasets import build as build_module

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DATA = Path(__file__).resolve().parent / "data"


def _columns(log: InteractionLog) -> tuple[list, list, list, list | None]:
    return (log.user.tolist(), log.item.tolist(), log.timestamp.tolist(),
            None if log.category is None else log.category.tolist())


def _original(log: InteractionLog) -> list[tuple]:
    """The log's rows in original ids: (user, item, time, category or None)."""
    cats = [None] * len(log) if log.category is None else [
        None if c == 0 else log.category_ids[c - 1] for c in log.category]  # type: ignore[index]
    return [(log.user_ids[u], log.item_ids[i - 1], t, c)
            for u, i, t, c in zip(log.user.tolist(), log.item.tolist(), log.timestamp.tolist(), cats)]


def _check_dense(log: InteractionLog) -> None:
    for name in ("user", "item", "timestamp"):
        assert getattr(log, name).dtype == np.int64
    assert sorted(set(log.user.tolist())) == list(range(log.n_users))
    assert sorted(set(log.item.tolist())) == list(range(1, log.n_items + 1))
    assert list(log.user_ids) == sorted(log.user_ids) and list(log.item_ids) == sorted(log.item_ids)
    if log.category is not None:
        assert set(range(1, log.n_categories + 1)) <= set(log.category.tolist()) <= set(range(log.n_categories + 1))


# --------------------------------------------------------------------------- formats


def test_movielens_100k_first_flagged_genre():
    log = read_log(DATA / "ml-100k" / "u.data")
    _check_dense(log)
    assert _original(log) == [
        (196, 242, 881250949, "Comedy"), (186, 302, 891717742, "Crime"), (22, 377, 878887116, "Children's"),
        (196, 302, 881250949, "Crime"), (186, 242, 881250000, "Comedy"), (22, 1, 878887000, "Animation"),
        (22, 267, 878887200, None),  # flagged 'unknown' only: category 0
    ]
    assert log.user_ids.tolist() == [22, 186, 196] and log.item_ids.tolist() == [1, 242, 267, 302, 377]
    assert log.category_ids.tolist() == ["Animation", "Children's", "Comedy", "Crime"]  # type: ignore[union-attr]
    assert read_log(DATA / "ml-100k" / "u.data", item_file=False).category is None


def test_movielens_1m_double_colon_and_titles_with_colons():
    log = read_log(DATA / "ml-1m" / "ratings.dat")
    _check_dense(log)
    assert _original(log) == [
        (1, 1193, 978300760, "Drama"), (1, 661, 978302109, "Animation"), (2, 1193, 978298413, "Drama"),
        (1, 914, 978301968, "Musical"), (2, 3408, 978300275, "Drama"),
    ]


def test_movielens_csv_quoted_titles_and_no_genres():
    log = read_log(DATA / "ml-latest" / "ratings.csv")
    _check_dense(log)
    assert _original(log) == [
        (1, 1, 964982703, "Adventure"), (1, 3, 964981247, "Comedy"), (5, 1, 847434962, "Adventure"),
        (1, 6, 964982224, "Action"), (5, 193609, 847435000, None),
    ]


def test_taobao_behaviour_filter():
    path = DATA / "taobao" / "UserBehavior.csv"
    clicks = read_log(path)
    _check_dense(clicks)
    assert _original(clicks) == [
        (1, 2268318, 1511544070, 2520377), (1, 2333346, 1511561733, 2520771),
        (100, 230380, 1511590000, 411153), (100, 2268318, 1511549000, 2520377),
    ]
    every = read_log(path, behaviors=None)
    assert len(every) == 7 and every.n_users == 3
    assert [r[:2] for r in _original(read_log(path, behaviors=["buy", "cart"]))] == [(100, 2268318), (1, 4365585)]
    assert len(read_log(path, behaviors=[])) == 0


def test_recbole_typed_header_string_tokens_and_item_file():
    log = read_log(DATA / "recbole" / "tiny.inter")
    _check_dense(log)
    assert _original(log) == [
        ("196", "242", 881250949, "Comedy"), ("186", "302", 891717742, "Crime"),
        ("alice", "242", 881250950, "Comedy"), ("196", "tt77", 881250000, None),
    ]
    renamed = read_log(DATA / "recbole" / "tiny.inter", columns={"time": "rating"}, item_file=False)
    assert renamed.timestamp.tolist() == [3, 3, 5, 1] and renamed.category is None
    with pytest.raises(KeyError, match=r"columns: user='uid' not found in .*tiny.inter; its columns are "):
        read_log(DATA / "recbole" / "tiny.inter", columns={"user": "uid"})


def test_recbole_integer_tokens_join_integer_item_file(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n5\t10\t1.6\n6\t2\t0\n")
    (tmp_path / "x.item").write_text("item_id:token\tgenre:token\n2\tb\n10\ta\n")
    log = read_log(tmp_path / "x.inter")
    assert _original(log) == [(5, 10, 2, "a"), (6, 2, 0, "b")]
    assert log.item_ids.dtype.kind == "i" and log.item.tolist() == [2, 1]


def test_csv_and_tsv_with_named_columns():
    cols = {"user": "uid", "item": "iid", "time": "ts", "category": "cat"}
    log = read_log(DATA / "clicks.tsv", columns=cols)
    _check_dense(log)
    assert _original(log) == [("u2", "i9", 1577836802, "books"), ("u1", "i9", 1577836801, "books"),
                              ("u1", "i3", 1577836805, None)]  # ISO times in seconds; empty category: unknown
    clicks = read_log(DATA / "clicks.tsv", columns={**cols, "behavior": "act"}, behaviors=["click"])
    assert [r[:2] for r in _original(clicks)] == [("u2", "i9"), ("u1", "i3")]
    with pytest.raises(ValueError, match=r"format 'csv' needs columns="):
        read_log(DATA / "clicks.tsv")
    with pytest.raises(KeyError, match=r"columns: time='when' not found"):
        read_log(DATA / "clicks.tsv", columns={**cols, "time": "when"})


def test_parquet_written_by_pyarrow(tmp_path):
    table = pa.table({
        "u": pa.array([30, 10, 30, 20], pa.int32()), "i": pa.array(["b", "a", "a", "c"]),
        "t": pa.array([3, 1, 2, 2], pa.timestamp("s")), "c": pa.array([7, 8, 8, None], pa.int64()),
        "kind": pa.array(["pv", "pv", "buy", "pv"]).dictionary_encode(),
    })
    pq.write_table(table, tmp_path / "log.parquet")
    log = read_log(tmp_path / "log.parquet", columns={"user": "u", "item": "i", "time": "t", "category": "c"})
    _check_dense(log)
    assert _original(log) == [(30, "b", 3, 7), (10, "a", 1, 8), (30, "a", 2, 8), (20, "c", 2, None)]
    pv = read_log(tmp_path / "log.parquet", columns={"user": "u", "item": "i", "time": "t", "behavior": "kind"})
    assert [r[:2] for r in _original(pv)] == [(30, "b"), (10, "a"), (20, "c")]


def test_auto_detection_and_compressed_files(tmp_path):
    for name in ("ml-100k/u.data", "ml-1m/ratings.dat", "ml-latest/ratings.csv", "taobao/UserBehavior.csv",
                 "recbole/tiny.inter"):
        src = DATA / name
        folder = tmp_path / src.parent.name
        shutil.copytree(src.parent, folder)
        with gzip.open(folder / (src.name + ".gz"), "wb") as out:
            out.write(src.read_bytes())
        plain = read_log(src)
        assert _original(read_log(folder / (src.name + ".gz"))) == _original(plain), name
    with pytest.raises(ValueError, match="format='auto' cannot tell the format of 'log.bin'"):
        read_log(tmp_path / "log.bin")


def test_argument_errors(tmp_path):
    path = DATA / "ml-100k" / "u.data"
    with pytest.raises(ValueError, match=r"format must be 'auto' or one of \['movielens-100k'"):
        read_log(path, format="excel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns applies to the 'csv', 'parquet' and 'recbole' formats"):
        read_log(path, columns={"user": "u"})
    with pytest.raises(ValueError, match=r"columns has unknown roles \['rating'\]"):
        read_log(DATA / "clicks.tsv", columns={"rating": "r"})
    with pytest.raises(TypeError, match="behaviors must be a sequence of strings"):
        read_log(path, behaviors="pv")
    with pytest.raises(ValueError, match="delimiter must be a single character"):
        read_log(DATA / "clicks.tsv", delimiter="::")
    with pytest.raises(FileNotFoundError, match="path .*missing.data does not exist"):
        read_log(tmp_path / "missing.data")
    with pytest.raises(FileNotFoundError, match="item_file=True but .*u.item does not exist"):
        shutil.copy(path, tmp_path / "u.data")
        read_log(tmp_path / "u.data", item_file=True)
    (tmp_path / "gaps.csv").write_text("u,i,t\n1,,5\n")
    with pytest.raises(ValueError, match="the item column has 1 missing values"):
        read_log(tmp_path / "gaps.csv", columns={"user": "u", "item": "i", "time": "t"})
    assert set(LOG_FORMATS) >= {"movielens-100k", "taobao", "recbole", "csv", "parquet"}


def test_missing_pyarrow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'etaretrieval\[data\]'"):
        read_log(DATA / "ml-100k" / "u.data")


# --------------------------------------------------------------------------- from_arrays


@settings(deadline=None, max_examples=40)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "zz"]), st.integers(0, 2**31 - 1), st.integers(0, 9),
                          st.sampled_from([3, 5, 11])), max_size=20),
       st.sampled_from([np.int32, np.int64, np.uint64]), st.sampled_from([0, -(2**31), 2**63 + 7]))
def test_from_arrays_matches_sorted_vocabularies(rows, dtype, shift):
    user, item, time, cat = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
    if not np.can_cast(np.min_scalar_type(shift), dtype) or (shift > 0 and dtype != np.uint64):
        shift = 0
    item = [i + shift for i in item]  # dense and sparse ids, negative ids, uint64 ids above 2**63
    arrays = [np.array(user, dtype=str), np.array(item, dtype=dtype), np.array(time, dtype=np.int64),
              np.array(cat, dtype=np.int64)]
    for a in arrays:
        a.flags.writeable = False  # never written to
    log = InteractionLog.from_arrays(*arrays)
    users, items, cats = sorted(set(user)), sorted(set(item)), sorted(set(cat))
    assert log.user.tolist() == [users.index(u) for u in user]
    assert log.item.tolist() == [items.index(i) + 1 for i in item]
    assert log.category.tolist() == [cats.index(c) + 1 for c in cat]  # type: ignore[union-attr]
    assert log.timestamp.tolist() == time and log.item_ids.tolist() == items
    first = {}
    for i, c in zip(log.item.tolist(), log.category.tolist()):  # type: ignore[union-attr]
        first.setdefault(i, c)
    assert log.item_categories().tolist() == [0] + [first[i] for i in range(1, log.n_items + 1)]


def test_from_arrays_validation():
    with pytest.raises(ValueError, match=r"item must have shape \(R,\) like user"):
        InteractionLog.from_arrays([1, 2], [1], [1, 2])
    with pytest.raises(ValueError, match="item holds floats that are not whole numbers"):
        InteractionLog.from_arrays([1], [1.5], [1])
    with pytest.raises(ValueError, match="timestamp holds NaN"):
        InteractionLog.from_arrays([1], [1], [np.nan])
    log = InteractionLog.from_arrays([1], [1], [1])
    with pytest.raises(ValueError, match=r"item must hold ids in \[1, 1\]"):
        InteractionLog(**{**log.__dict__, "item": np.array([2])})


# --------------------------------------------------------------------------- build_samples


def _reference(log: InteractionLog, max_len, test_fraction, min_history):
    """Per user, in plain Python: the store and the positives (user, target, time, history, train, category)."""
    rows = sorted(range(len(log)), key=lambda r: (log.user[r], log.timestamp[r], r))
    store, positives = [], []
    for u in range(log.n_users):
        seq = [r for r in rows if log.user[r] == u]
        if max_len is not None:
            seq = seq[-max_len:]
        store.extend(seq)
        mine = []
        for j, r in enumerate(seq):
            history = [int(log.item[h]) for h in seq[:j] if log.timestamp[h] < log.timestamp[r]]
            if len(history) >= min_history:
                cat = None if log.category is None else int(log.category[r])
                mine.append([u, int(log.item[r]), int(log.timestamp[r]), history, True, cat])
        for p in mine[len(mine) - math.floor(len(mine) * test_fraction + 1e-9):]:
            p[4] = False
        positives.extend(mine)
    return store, positives


@st.composite
def _logs(draw):
    n = draw(st.integers(0, 25))
    n_items = draw(st.integers(2, 8))
    user = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    item = draw(st.lists(st.integers(1, n_items), min_size=n, max_size=n))
    time = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))  # many ties
    item = item + [1, n_items]  # every item id occurs, so the dense ids are the drawn ones
    user, time = user + [0, 0], time + [0, 0]
    cat = [i % 3 for i in item] if draw(st.booleans()) else None
    return InteractionLog.from_arrays(user, item, time, cat)


@settings(deadline=None, max_examples=60)
@given(_logs(), st.one_of(st.none(), st.integers(1, 6)), st.sampled_from([0.0, 0.2, 0.5, 1.0]),
       st.integers(0, 3), st.integers(0, 2), st.sampled_from(["uniform", "popularity"]), st.booleans(),
       st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 1 << 20]))
def test_build_samples_matches_a_loop(log, max_len, test_fraction, min_history, negatives, sampling, exclude_seen,
                                      seed, chunk):
    for name in ("user", "item", "timestamp", "category"):
        if getattr(log, name) is not None:
            getattr(log, name).flags.writeable = False  # never written to
    with mock.patch.object(build_module, "_CHUNK", chunk):  # negatives drawn for `chunk` positives at a time
        data = build_samples(log, max_len=max_len, test_fraction=test_fraction, negatives=negatives,
                             sampling=sampling, exclude_seen=exclude_seen, min_history=min_history, seed=seed)
    assert isinstance(data, SequenceSamples)
    store, positives = _reference(log, max_len, test_fraction, min_history)
    assert data.items.tolist() == log.item[store].tolist() and data.times.tolist() == log.timestamp[store].tolist()
    assert data.offsets.tolist() == np.r_[0, np.cumsum(np.bincount(log.user[store], minlength=log.n_users))].tolist()
    width = 1 + negatives
    assert data.n_samples == width * len(positives) and data.n_items == log.n_items
    assert data.label.tolist() == ([1.0] + [0.0] * negatives) * len(positives)
    pos = np.arange(0, data.n_samples, width)
    got = [[int(data.user[s]), int(data.target[s]), int(data.target_time[s]),
            data.items[data.offsets[data.user[s]]:data.end[s]].tolist(), bool(data.train[s]),
            None if data.target_category is None else int(data.target_category[s])] for s in pos]
    assert got == positives
    for k in range(1, width):  # negatives share the positive's user, time, history and split
        for name in ("user", "target_time", "end", "train"):
            assert (getattr(data, name)[pos + k] == getattr(data, name)[pos]).all()
        neg = data.target[pos + k]
        assert ((neg >= 1) & (neg <= log.n_items) & (neg != data.target[pos])).all()
        if data.target_category is not None:
            assert (data.target_category[pos + k] == log.item_categories()[neg]).all()
        if exclude_seen:
            for s, i in zip(pos, neg):
                seen = set(log.item[log.user == data.user[s]].tolist())
                assert i not in seen or len(seen) == log.n_items
    with mock.patch.object(build_module, "_CHUNK", chunk):
        again = build_samples(log, max_len=max_len, test_fraction=test_fraction, negatives=negatives,
                              sampling=sampling, exclude_seen=exclude_seen, min_history=min_history, seed=seed)
    np.testing.assert_array_equal(again.target, data.target)


def test_negatives_depend_on_the_seed_and_follow_popularity():
    rng = np.random.default_rng(0)
    item = np.where(rng.random(20000) < 0.5, 1, rng.integers(2, 101, size=20000))
    log = InteractionLog.from_arrays(rng.integers(0, 500, size=item.size), item, rng.integers(0, 10**6, item.size))
    uniform = build_samples(log, exclude_seen=False, seed=1)
    assert not np.array_equal(uniform.target, build_samples(log, exclude_seen=False, seed=2).target)
    popular = build_samples(log, sampling="popularity", exclude_seen=False, seed=1)
    def share(d: SequenceSamples) -> float:  # of item 1 among the negatives of the other positives
        negative_of_other = np.r_[False, (d.label[1:] == 0) & (d.target[:-1] != 1)]
        return float(np.mean(d.target[negative_of_other] == 1))

    assert share(uniform) < 0.05 and 0.4 < share(popular) < 0.6  # item 1 holds about half of the rows


def test_build_samples_on_the_movielens_fixture():
    data = build_samples(read_log(DATA / "ml-100k" / "u.data"), test_fraction=0.5, negatives=2, min_history=0)
    assert data.n_samples == 3 * 7 and data.n_categories == 4
    batch = data.batch(np.arange(data.n_samples), max_len=4)
    # user 196 rated 242 and 302 at the same second: neither sees the other
    assert batch.lengths[data.user == 2].tolist() == [0] * 6


def test_build_samples_validation():
    log = InteractionLog.from_arrays([1, 1], [1, 2], [1, 2])
    for kwargs, match in [({"max_len": 0}, "max_len must be >= 1 or None"),
                          ({"test_fraction": 1.5}, r"test_fraction must be in \[0, 1\]"),
                          ({"negatives": -1}, "negatives must be >= 0"),
                          ({"negatives": 1.5}, "negatives must be an integer"),
                          ({"sampling": "hard"}, "sampling must be 'uniform' or 'popularity'"),
                          ({"min_history": -1}, "min_history must be >= 0")]:
        with pytest.raises((ValueError, TypeError), match=match):
            build_samples(log, **kwargs)
    with pytest.raises(TypeError, match="log must be an InteractionLog"):
        build_samples({"user": [1]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negatives need at least 2 items"):
        build_samples(InteractionLog.from_arrays([1, 1], [1, 1], [1, 2]))
    assert build_samples(InteractionLog.from_arrays([1, 1], [1, 1], [1, 2]), negatives=0).n_samples == 1


def test_string_ids_become_integers_only_when_canonical(tmp_path):
    (tmp_path / "a.csv").write_text("u,i,t\n10,7,1\n9,12,2\n")
    (tmp_path / "b.csv").write_text("u,i,t\nNA,007,1\nNA,7,2\n")
    cols = {"user": "u", "item": "i", "time": "t"}
    a = read_log(tmp_path / "a.csv", columns=cols)
    assert a.user_ids.tolist() == [9, 10] and a.item_ids.tolist() == [7, 12]  # numeric order, not "10" < "9"
    b = read_log(tmp_path / "b.csv", columns=cols)
    assert b.user_ids.tolist() == ["NA"] and b.item_ids.tolist() == ["007", "7"] and b.item.tolist() == [1, 2]


def test_time_order_with_huge_timestamps_falls_back_to_lexsort():
    t = np.array([2**62 + 5, -(2**62), 2**62 + 5, 7])
    log = InteractionLog.from_arrays([1, 1, 1, 2], [1, 2, 3, 1], t)
    data = build_samples(log, negatives=0, min_history=0, test_fraction=0.0)
    assert data.times.tolist() == [-(2**62), 2**62 + 5, 2**62 + 5, 7] and data.items.tolist() == [2, 1, 3, 1]
    assert data.history_lengths().tolist() == [0, 1, 1, 0]


def _write(fmt: str, folder: Path, rows: list[tuple[int, int, int, int, str]]) -> Path:
    """``rows`` of (user, item, time, category, behaviour) in the file layout of ``fmt``."""
    if fmt == "taobao":
        path = folder / "UserBehavior.csv"
        path.write_text("".join(f"{u},{i},{c},{b},{t}\n" for u, i, t, c, b in rows))
    elif fmt == "movielens-100k":
        path = folder / "u.data"
        path.write_text("".join(f"{u}\t{i}\t3\t{t}\n" for u, i, t, _, _ in rows))
    elif fmt == "movielens-1m":
        path = folder / "ratings.dat"
        path.write_text("".join(f"{u}::{i}::3::{t}\n" for u, i, t, _, _ in rows))
    elif fmt == "recbole":
        path = folder / "x.inter"
        path.write_text("user_id:token\titem_id:token\ttimestamp:float\tcat:token\n"
                        + "".join(f"u{u}\t{i}\t{t}.0\t{c}\n" for u, i, t, c, _ in rows))
    elif fmt == "csv":
        path = folder / "log.csv"
        path.write_text("who,what,when,kind\n" + "".join(f"u{u},{i},{t},c{c}\n" for u, i, t, c, _ in rows))
    else:
        path = folder / "log.parquet"
        cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
        pq.write_table(pa.table({"who": pa.array(cols[0], pa.int64()), "what": pa.array(cols[1], pa.int64()),
                                 "when": pa.array(cols[2], pa.int64()), "kind": pa.array(cols[3], pa.int64())}), path)
    return path


@settings(deadline=None, max_examples=30)
@given(st.sampled_from(["taobao", "movielens-100k", "movielens-1m", "recbole", "csv", "parquet"]),
       st.lists(st.tuples(st.integers(1, 6), st.integers(1, 10**7), st.integers(0, 2**40), st.integers(1, 4),
                          st.sampled_from(["pv", "buy"])), min_size=1, max_size=15))
def test_every_format_reads_back_what_was_written(fmt, rows):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(fmt, Path(folder), rows)
        columns = {"user": "who", "item": "what", "time": "when", "category": "kind"}
        log = read_log(path, columns=columns if fmt in ("csv", "parquet") else
                       {"category": "cat"} if fmt == "recbole" else None)
    kept = [r for r in rows if r[4] == "pv"] if fmt == "taobao" else rows
    expect = [(u, i, t) for u, i, t, _, _ in kept]
    got = [r[:3] for r in _original(log)]
    if fmt in ("recbole", "csv"):
        expect = [(f"u{u}", i, t) for u, i, t in expect]
    assert got == expect
    if fmt in ("taobao", "recbole", "csv", "parquet"):
        prefix = "c" if fmt == "csv" else ""
        want = [f"{prefix}{c}" if prefix else c for _, _, _, c, _ in kept]
        assert [r[3] for r in _original(log)] == want
    _check_dense(log)
