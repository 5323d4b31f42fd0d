"""Signature tables that ship with the model: SignatureTable.save/load, SignatureCache in the state_dict,
and the stale-cache check (eager and compiled)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import etaretrieval as er

DIM, BITS = 8, 70


def _table(n: int = 50, seed: int = 0, dtype: type = np.float32) -> tuple[np.ndarray, er.SimHasher, er.SignatureTable]:
    weight = np.random.default_rng(seed).standard_normal((n, DIM)).astype(dtype)
    hasher = er.SimHasher(DIM, BITS, seed=seed)
    return weight, hasher, er.SignatureTable(weight, hasher)


# --------------------------------------------------------------------------- SignatureTable.save / load


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    weight, hasher, table = _table()
    table.save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "table.json").read_text())
    assert (meta["rows"], meta["words"], meta["bits"], meta["dim"]) == (50, 2, BITS, DIM)
    assert meta["embedding_shape"] == [50, DIM] and meta["version"] == 2
    checksum = meta["signatures"]["checksum"]
    assert checksum["algorithm"] == "sha256" and len(checksum["blocks"]) == 1
    loaded = er.SignatureTable.load(tmp_path / "t", mmap=mmap)
    assert type(loaded.signatures) is np.ndarray and loaded.signatures.dtype == np.uint64
    np.testing.assert_array_equal(loaded.signatures, table.signatures)
    np.testing.assert_array_equal(loaded.hasher.planes, hasher.planes)
    assert not loaded.hasher.planes.flags.writeable
    assert loaded.signatures.flags.writeable is not mmap  # a read-only map without weight
    assert len(loaded) == 50 and repr(loaded) == f"SignatureTable(rows=50, bits={BITS})"
    ids = np.random.default_rng(1).integers(0, 50, size=(4, 30))
    query = hasher(weight[:4])
    for got, want in zip(er.topk_hamming_lookup(query, ids, loaded.signatures, 7),
                         er.topk_hamming_lookup(query, ids, table.signatures, 7)):
        np.testing.assert_array_equal(got, want)


def test_loaded_with_weight_refreshes_without_touching_the_file(tmp_path: Path) -> None:
    weight, hasher, table = _table()
    table.save(tmp_path / "t")
    on_disk = np.load(tmp_path / "t" / "signatures.npy").copy()
    loaded = er.SignatureTable.load(tmp_path / "t", weight=weight, hasher=hasher)
    assert loaded.weight is weight
    weight[[3, 9]] *= -1.0
    loaded.refresh([3, 9])
    np.testing.assert_array_equal(loaded.signatures, hasher(weight))
    loaded.refresh()
    np.testing.assert_array_equal(loaded.signatures, hasher(weight))
    np.testing.assert_array_equal(np.load(tmp_path / "t" / "signatures.npy"), on_disk)  # copy-on-write


def test_save_replaces_a_table_and_keeps_open_maps_valid(tmp_path: Path) -> None:
    _, _, first = _table(seed=0)
    _, _, second = _table(n=20, seed=1)
    first.save(tmp_path / "t")
    opened = er.SignatureTable.load(tmp_path / "t")
    second.save(tmp_path / "t")
    np.testing.assert_array_equal(opened.signatures, first.signatures)  # the old file stays mapped
    np.testing.assert_array_equal(er.SignatureTable.load(tmp_path / "t").signatures, second.signatures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no staging directory left behind


def test_empty_table_round_trip(tmp_path: Path) -> None:
    _, _, table = _table(n=0)
    table.save(tmp_path / "t")
    assert er.SignatureTable.load(tmp_path / "t").signatures.shape == (0, 2)


def test_load_refuses_other_planes(tmp_path: Path) -> None:
    _, _, table = _table(seed=0)
    table.save(tmp_path / "t")
    with pytest.raises(ValueError, match="was made with other planes than hasher's"):
        er.SignatureTable.load(tmp_path / "t", hasher=er.SimHasher(DIM, BITS, seed=1))
    with pytest.raises(ValueError, match="other planes"):
        er.SignatureTable.load(tmp_path / "t", hasher=er.SimHasher(DIM, BITS + 1, seed=0))
    with pytest.raises(TypeError, match="hasher must be a SimHasher"):
        er.SignatureTable.load(tmp_path / "t", hasher=table.hasher.planes)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(49, DIM), (50, DIM + 1), (50,)])
def test_load_refuses_another_embedding_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    _, hasher, table = _table()
    table.save(tmp_path / "t")
    with pytest.raises(ValueError, match=r"weight must have the shape of the embedding .* \(50, 8\), got shape"):
        er.SignatureTable.load(tmp_path / "t", weight=np.zeros(shape, dtype=np.float32), hasher=hasher)


def test_load_checks_weight_like_the_constructor(tmp_path: Path) -> None:
    _, _, table = _table()
    table.save(tmp_path / "t")
    with pytest.raises(TypeError, match="weight must have dtype float32 or float64"):
        er.SignatureTable.load(tmp_path / "t", weight=np.zeros((50, DIM), dtype=np.int32))


def test_loaded_without_weight_cannot_refresh(tmp_path: Path) -> None:
    _, _, table = _table()
    table.save(tmp_path / "t")
    loaded = er.SignatureTable.load(tmp_path / "t")
    for rows in (None, [1]):
        with pytest.raises(ValueError, match="loaded without its weight.*pass weight="):
            loaded.refresh(rows)


def test_load_and_save_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no saved SignatureTable"):
        er.SignatureTable.load(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    _, _, table = _table()
    with pytest.raises(FileExistsError, match="is not a saved SignatureTable"):
        table.save(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    table.save(tmp_path / "t")
    meta_path = tmp_path / "t" / "table.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(er.TableFileError, match="format version 99; this etaretrieval reads versions 1..2: upgrade"):
        er.SignatureTable.load(tmp_path / "t")
    for changed in ({"planes_sha256": "0" * 64}, {"rows": 51}, {"bits": 71}):
        meta_path.write_text(json.dumps({**meta, **changed}))
        with pytest.raises(er.TableFileError, match="damaged: table.json does not match its digest"):
            er.SignatureTable.load(tmp_path / "t")


def test_worker_processes_open_the_same_map(tmp_path: Path) -> None:
    """Another process opens the saved table memory-mapped and answers the same lookups."""
    weight, hasher, table = _table(n=200)
    table.save(tmp_path / "t")
    ids = np.random.default_rng(3).integers(0, 200, size=(5, 40))
    query = hasher(weight[:5])
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "query.npy", query)
    code = (
        "import sys, numpy as np, etaretrieval as er\n"
        "d = sys.argv[1]\n"
        "t = er.SignatureTable.load(d + '/t')\n"
        "assert not t.signatures.flags.owndata\n"
        "idx, dist = er.topk_hamming_lookup(np.load(d + '/query.npy'), np.load(d + '/ids.npy'), t.signatures, 9)\n"
        "np.save(d + '/idx.npy', idx)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    want, _ = er.topk_hamming_lookup(query, ids, table.signatures, 9)
    np.testing.assert_array_equal(np.load(tmp_path / "idx.npy"), want)


# --------------------------------------------------------------------------- checksums, damage, atomic writes


def _saved(tmp_path: Path, n: int = 50) -> tuple[er.SignatureTable, Path]:
    _, _, table = _table(n=n)
    table.save(tmp_path / "t")
    return table, tmp_path / "t"


def _flip_one_bit_like_the_issue(path: Path) -> None:
    """The issue's reproducer: rewrite signatures.npy with one bit flipped (same size, same header)."""
    f = path / "signatures.npy"
    a = np.load(f)
    a[0, 0] ^= 1
    np.save(f, a)


def test_a_flipped_bit_is_found_by_every_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21.1: load(verify=True), the background check and verify() each refuse a flipped bit."""
    table, path = _saved(tmp_path)
    _flip_one_bit_like_the_issue(path)
    for mmap in (True, False):
        with pytest.raises(er.TableFileError, match=r"damaged: signatures.npy does not match its checksums in 1 of 1 "
                                                    r"blocks \(first: block 0, rows 0..49\)") as err:
            er.SignatureTable.load(path, mmap=mmap, verify=True)
        assert err.value.path == str(path) and isinstance(err.value, ValueError)
    unverified = er.SignatureTable.load(path)  # O(1): the data are not read ...
    with pytest.raises(er.TableFileError, match="does not match its checksums"):
        unverified.verify()  # ... until asked
    with pytest.raises(er.TableFileError, match="does not match its checksums"):
        unverified.verify()  # the outcome is kept
    background = er.SignatureTable.load(path, verify="background")
    with caplog.at_level("ERROR", logger="etaretrieval"), pytest.raises(er.TableFileError, match="checksums"):
        background.verify(timeout=60)
    assert any("does not match its checksums" in r.getMessage() for r in caplog.records)
    table.save(path)
    assert er.SignatureTable.load(path, verify="background").verify() is True


@pytest.mark.parametrize("threads", [1, 2])
def test_damaged_blocks_are_named_by_their_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                threads: int) -> None:
    """With 64-byte blocks (4 rows of 2 words), a flip in row 37 names block 9, rows 36..39."""
    from etaretrieval import _tablefile

    monkeypatch.setattr(_tablefile, "BLOCK_BYTES", 64)
    monkeypatch.setattr(_tablefile, "READ_BYTES", 24)  # each block read in pieces of 24, 24 and 16 bytes
    table, path = _saved(tmp_path)
    assert json.loads((path / "table.json").read_text())["signatures"]["checksum"]["block_bytes"] == 64
    with er.threads(threads):
        assert er.SignatureTable.load(path, verify=True).verify() is True
    raw = bytearray((path / "signatures.npy").read_bytes())
    offset = len(raw) - table.signatures.nbytes
    raw[offset + 37 * 16 + 9] ^= 0x10
    raw[-1] ^= 0x01  # and the last row
    (path / "signatures.npy").write_bytes(bytes(raw))
    damaged = r"in 2 of 13 blocks \(first: block 9, rows 36..39\)"
    with er.threads(threads), pytest.raises(er.TableFileError, match=damaged):
        er.SignatureTable.load(path, mmap=False, verify=True)


def _damage(path: Path, how: str) -> None:
    sig, meta_path = path / "signatures.npy", path / "table.json"
    meta = json.loads(meta_path.read_text())
    if how == "truncated by 8 bytes":
        sig.write_bytes(sig.read_bytes()[:-8])
    elif how == "longer":
        sig.write_bytes(sig.read_bytes() + b"\0" * 8)
    elif how == "empty file":
        sig.write_bytes(b"")
    elif how == "header says object":  # the issue's misleading 'pickled (object) data' error
        sig.write_bytes(sig.read_bytes().replace(b"'<u8'", b"'|O8'", 1))
    elif how == "header not npy":
        sig.write_bytes(b"\0" * 16 + sig.read_bytes()[16:])
    elif how == "int64 of the same shape":
        np.save(sig, np.load(sig).astype(np.int64))
    elif how == "another shape":
        np.save(sig, np.load(sig)[:-1])
    elif how == "no signatures.npy":
        sig.unlink()
    elif how == "no planes.npy":
        (path / "planes.npy").unlink()
    elif how == "planes damaged":
        raw = bytearray((path / "planes.npy").read_bytes())
        raw[-3] ^= 0x40
        (path / "planes.npy").write_bytes(bytes(raw))
    elif how == "planes header unreadable":  # NumPy's own parse fails inside tokenize
        (path / "planes.npy").write_bytes((path / "planes.npy").read_bytes().replace(b"'shape': (", b"'shape': )", 1))
    elif how == "planes longer":
        (path / "planes.npy").write_bytes((path / "planes.npy").read_bytes() + b"\0")
    elif how == "json '{'":
        meta_path.write_text("{")
    elif how == "json not utf-8":
        meta_path.write_bytes(b"\xff\xfe")
    elif how == "json a list":
        meta_path.write_text("[]")
    elif how == "json without rows":
        del meta["rows"]
        meta_path.write_text(json.dumps(meta))
    elif how == "json without its digest":
        del meta["meta_sha256"]
        meta_path.write_text(json.dumps(meta))
    elif how == "json version 'two'":
        meta_path.write_text(json.dumps({**meta, "version": "two"}))
    else:
        raise AssertionError(how)


DAMAGE = {
    "truncated by 8 bytes": "signatures.npy is truncated",
    "longer": "signatures.npy is longer than table.json says",
    "empty file": r"signatures.npy is truncated \(0 bytes",
    "header says object": "the .npy header of signatures.npy does not match its digest",
    "header not npy": "the .npy header of signatures.npy does not match its digest",
    "int64 of the same shape": "the .npy header of signatures.npy does not match its digest",
    "another shape": "signatures.npy is truncated",
    "no signatures.npy": "is incomplete: signatures.npy is missing",
    "no planes.npy": "is incomplete: planes.npy is missing",
    "planes damaged": "planes.npy does not match its fingerprint",
    "planes longer": r"planes.npy has 2369 bytes, its header says 2368",
    "planes header unreadable": r"planes.npy has no readable .npy header \(TokenError",
    "json '{'": "table.json is not valid JSON",
    "json not utf-8": "table.json is not UTF-8 text",
    "json a list": "is not a SignatureTable: table.json does not describe one",
    "json without rows": "table.json does not match its digest",
    "json without its digest": "is incomplete: table.json 'meta_sha256' is missing",
    "json version 'two'": "table.json 'version' must be an integer, got 'two'",
}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("verify", [False, True])
def test_damaged_tables_raise_one_named_error(tmp_path: Path, how: str, verify: bool) -> None:
    """Issue 21.2: each damage is a TableFileError (a ValueError) that names the path and what is wrong."""
    _, path = _saved(tmp_path)
    _damage(path, how)
    with pytest.raises(er.TableFileError, match=DAMAGE[how]) as err:
        er.SignatureTable.load(path, verify=verify)
    assert f"the SignatureTable at {str(path)!r}" in str(err.value) and err.value.path == str(path)


def test_not_a_table_directory(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    with pytest.raises(er.TableFileError, match=r"table.json' is a file, not a table directory"):
        er.SignatureTable.load(path / "table.json")
    with pytest.raises(er.TableFileError, match="does not exist"):
        er.SignatureTable.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="verify must be False, True or 'background', got 'yes'"):
        er.SignatureTable.load(path, verify="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built in memory"):
        _table()[2].verify()


def _as_version_1(path: Path) -> None:
    """Rewrite a saved table as format version 1 wrote it: no checksums in table.json."""
    meta = json.loads((path / "table.json").read_text())
    old = {key: meta[key] for key in ("format", "rows", "words", "bits", "dim", "embedding_shape", "planes_sha256")}
    (path / "table.json").write_text(json.dumps({**old, "version": 1}))


def test_version_1_tables_load_and_upgrade(tmp_path: Path) -> None:
    """Tables of format version 1 still load (structure checked), cannot be verified, and re-save as version 2."""
    table, path = _saved(tmp_path)
    _as_version_1(path)
    old = er.SignatureTable.load(path)
    np.testing.assert_array_equal(old.signatures, table.signatures)
    with pytest.raises(er.TableFileError, match="format version 1, which carries no checksums.*save it again"):
        old.verify()
    with pytest.raises(er.TableFileError, match="format version 1, which carries no checksums"):
        er.SignatureTable.load(path, verify=True)
    np.save(path / "signatures.npy", table.signatures[:, :1].copy())
    with pytest.raises(er.TableFileError, match=r"signatures.npy holds uint64 \(50, 1\).*says <u8 \(50, 2\)"):
        er.SignatureTable.load(path)
    np.save(path / "signatures.npy", table.signatures)
    er.SignatureTable.load(path).save(path)  # the upgrade: a mapped table saved over its own directory
    assert json.loads((path / "table.json").read_text())["version"] == 2
    np.testing.assert_array_equal(er.SignatureTable.load(path, verify=True).signatures, table.signatures)


def test_verify_reads_the_file_it_opened(tmp_path: Path) -> None:
    """A table saved again after load does not disturb the check; a file changed in place is caught."""
    table, path = _saved(tmp_path)
    opened = er.SignatureTable.load(path)
    _table(n=20, seed=3)[2].save(path)  # replaced: `opened` still maps the old (now unlinked) file
    assert opened.verify() is True
    np.testing.assert_array_equal(opened.signatures, table.signatures)
    second = er.SignatureTable.load(path)
    _flip_one_bit_like_the_issue(path)  # rewritten in place: the same inode, which `second` maps
    with pytest.raises(er.TableFileError, match="checksums"):
        second.verify()


def test_an_interrupted_save_leaves_the_old_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etaretrieval import _tablefile

    table, path = _saved(tmp_path)
    written: list[str] = []
    real = _tablefile._write_file

    def fail_after_signatures(staging: Path, name: str, parts: list) -> None:
        real(staging, name, parts)
        written.append(name)
        if name == "signatures.npy":
            raise KeyboardInterrupt

    monkeypatch.setattr(_tablefile, "_write_file", fail_after_signatures)
    with pytest.raises(KeyboardInterrupt):
        _table(n=20, seed=4)[2].save(path)
    assert written == ["signatures.npy"] and sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    np.testing.assert_array_equal(er.SignatureTable.load(path, verify=True).signatures, table.signatures)


def test_a_killed_save_leaves_the_old_table(tmp_path: Path) -> None:
    """A process killed in the middle of a save (after its data, before the swap) leaves the old table in place."""
    table, path = _saved(tmp_path)
    code = (
        "import os, sys, numpy as np, etaretrieval as er\n"
        "from etaretrieval import _tablefile\n"
        "_tablefile._sync_dir = lambda path: os._exit(3)  # dies after writing every file, before the swap\n"
        "w = np.ones((7, 8), dtype=np.float32)\n"
        "er.SignatureTable(w, er.SimHasher(8, 70)).save(sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], check=False, timeout=120)
    assert done.returncode == 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "t"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".t.") and leftovers[0].endswith(".saving")
    np.testing.assert_array_equal(er.SignatureTable.load(path, verify=True).signatures, table.signatures)


def test_save_without_an_atomic_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2(RENAME_EXCHANGE) is unavailable, the old table is renamed aside, then removed."""
    from etaretrieval import _tablefile

    monkeypatch.setattr(_tablefile, "_exchange", lambda a, b: False)
    _, path = _saved(tmp_path)
    opened = er.SignatureTable.load(path)
    _, _, second = _table(n=20, seed=1)
    second.save(path)
    np.testing.assert_array_equal(er.SignatureTable.load(path, verify=True).signatures, second.signatures)
    assert opened.verify() is True and sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_readers_never_see_a_half_written_table(tmp_path: Path) -> None:
    """While one thread saves two tables in turn, another loads and verifies: always one whole table or the other."""
    import threading

    tables = [_table(n=400, seed=0)[2], _table(n=300, seed=1)[2]]
    path = tmp_path / "t"
    tables[0].save(path)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tables[i % 2].save(path)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(60):
            got = er.SignatureTable.load(path, mmap=False, verify=True).signatures
            assert any(got.shape == t.signatures.shape and (got == t.signatures).all() for t in tables)
    finally:
        stop.set()
        thread.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


# --------------------------------------------------------------------------- SignatureCache in the state_dict

try:
    import torch
    from torch import nn

    from etaretrieval.torch import ETARetriever, SignatureCache
except ImportError:  # the plugin needs torch, an optional extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def _model(n: int = 40, bits: int = 64, cache_first: bool = False, seed: int = 0) -> nn.Module:
    """A serving model that owns its embedding, retriever and cache (registered in either order)."""
    torch.manual_seed(seed)
    model = nn.Module()
    if cache_first:  # the cache's table is loaded before the embedding's weights
        emb, retriever = nn.Embedding(n, DIM), ETARetriever(DIM, bits, k=5, seed=seed)
        model.cache = SignatureCache(emb, retriever)
        model.items, model.retriever = emb, retriever
    else:
        model.items = nn.Embedding(n, DIM)
        model.retriever = ETARetriever(DIM, bits, k=5, seed=seed)
        model.cache = SignatureCache(model.items, model.retriever)
    return model


def _serve(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.retriever(model.items(ids[:, 0]), seq_ids=ids, cache=model.cache).index


@needs_torch
@pytest.mark.parametrize("cache_first", [False, True])
def test_state_dict_carries_the_table(tmp_path: Path, cache_first: bool) -> None:
    model = _model(cache_first=cache_first, seed=0)
    state = model.state_dict()
    assert {"cache.signatures", "cache.planes"} <= set(state)
    assert sorted(key for key in state if key.startswith("cache.")) == ["cache.planes", "cache.signatures"]
    torch.save(state, tmp_path / "model.pt")
    other = _model(cache_first=cache_first, seed=1)  # other weights and planes
    other.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert not other.cache.embedding_changed()
    assert torch.equal(other.cache.signatures, model.cache.signatures)
    ids = torch.randint(0, 40, (3, 25), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_serve(other, ids), _serve(model, ids))
    assert torch.equal(_serve(other, ids), other.retriever(other.items(ids[:, 0]), other.items(ids)).index)


@needs_torch
def test_checkpoint_without_the_table_loads_and_asks_for_a_refresh() -> None:
    """A state_dict saved before caches were saved with the model loads (strict); the cache is then stale."""
    model, other = _model(seed=0), _model(seed=1)
    old = {key: value for key, value in other.state_dict().items() if not key.startswith("cache.")}
    old["retriever.planes"] = model.retriever.planes.clone()  # the same planes, other item embeddings
    model.load_state_dict(old)
    with pytest.raises(ValueError, match="cache is stale"):
        _serve(model, torch.zeros(1, 4, dtype=torch.int64))
    model.cache.refresh()
    assert torch.equal(model.cache.signatures,
                       torch.ops.etaretrieval.pack_signatures(other.items.weight.detach(), model.retriever.planes))


@needs_torch
def test_state_dict_of_another_embedding_shape_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"cache.signatures has shape \(40, 1\), but this SignatureCache needs "
                                           r"\(30, 1\) \(embedding \(30, 8\)"):
        _model(n=30).load_state_dict(_model(n=40).state_dict())
    with pytest.raises(RuntimeError, match="another embedding shape or other planes"):
        _model(bits=64).cache.load_state_dict(_model(bits=128).cache.state_dict())


@needs_torch
def test_loaded_table_of_other_planes_is_refused_at_use() -> None:
    model, other = _model(seed=0), _model(seed=1)
    model.cache.load_state_dict(other.cache.state_dict())  # other planes than model.retriever's
    ids = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="cache holds signatures hashed with other planes"):
        _serve(model, ids)
    model.cache.refresh()
    _serve(model, ids)


@needs_torch
def test_embedding_loaded_alone_makes_the_cache_stale() -> None:
    model, other = _model(seed=0), _model(seed=1)
    ids = torch.zeros(1, 4, dtype=torch.int64)
    _serve(model, ids)
    model.items.load_state_dict(other.items.state_dict())
    assert model.cache.embedding_changed()
    with pytest.raises(ValueError, match="cache is stale"):
        _serve(model, ids)


@needs_torch
def test_stale_cache_raises_eagerly() -> None:
    model = _model()
    ids = torch.randint(0, 40, (3, 25), generator=torch.Generator().manual_seed(1))
    _serve(model, ids)
    with torch.no_grad():
        model.items.weight[[2, 7]] *= -1
    assert model.cache.embedding_changed()
    with pytest.raises(ValueError, match=r"cache is stale: embedding.weight changed .*cache.refresh\(rows\)"):
        _serve(model, ids)
    model.cache.refresh([2, 7])
    assert torch.equal(_serve(model, ids), model.retriever(model.items(ids[:, 0]), model.items(ids)).index)
    model.items.weight = nn.Parameter(model.items.weight.detach().clone())  # replaced, not changed in place
    with pytest.raises(ValueError, match="replaced by another tensor"):
        _serve(model, ids)
    model.cache.refresh()
    _serve(model, ids)


@needs_torch
@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_stale_cache_raises_under_compile() -> None:
    """Issue 11.2: compiled code checks the cache on every call, as eager code does, and matches eager when fresh."""
    model = _model()
    ids = torch.randint(0, 40, (3, 25), generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(_serve, fullgraph=True)
    assert torch.equal(compiled(model, ids), _serve(model, ids))
    optimizer = torch.optim.SGD(model.items.parameters(), lr=1.0)
    model.items(ids).square().sum().backward()
    optimizer.step()  # not attached: the cache is now stale
    with pytest.raises(ValueError, match="cache is stale"):
        compiled(model, ids)
    model.cache.refresh(ids)
    fresh = model.retriever(model.items(ids[:, 0]), model.items(ids)).index
    assert torch.equal(compiled(model, ids), fresh)
    with torch.no_grad():
        model.items.weight[5] *= -1
    with pytest.raises(ValueError, match="cache is stale"):
        compiled(model, ids)
    model.cache.load_state_dict(_model(seed=3).cache.state_dict())  # other planes, same shapes
    with pytest.raises(ValueError, match="other planes"):
        compiled(model, ids)


@needs_torch
def test_attached_cache_stays_fresh_through_sparse_updates() -> None:
    model = _model()
    model.items = nn.Embedding(40, DIM, sparse=True)
    model.cache = SignatureCache(model.items, model.retriever)
    optimizer = torch.optim.SparseAdam(list(model.items.parameters()), lr=0.5)
    model.cache.attach(optimizer)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        ids = torch.randint(0, 20, (3, 10), generator=gen)
        model.items(ids).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert not model.cache.embedding_changed()
        assert torch.equal(model.cache.signatures,
                           torch.ops.etaretrieval.pack_signatures(model.items.weight.detach(), model.retriever.planes))
        _serve(model, ids)


@needs_torch
def test_attached_cache_follows_a_moved_model() -> None:
    """After model.to(...) (here a dtype conversion, standing in for a device move) the hook rehashes every row."""
    model = _model()
    optimizer = torch.optim.SGD(model.items.parameters(), lr=0.1)
    model.cache.attach(optimizer)
    model.to(torch.float64)  # a conversion replaces the weight's data, as a device move does
    assert model.cache.signatures.dtype == torch.int64  # buffers of integers are not converted
    model.items(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    assert torch.equal(model.cache.signatures,
                       torch.ops.etaretrieval.pack_signatures(model.items.weight.detach(), model.retriever.planes))
    _serve(model, torch.zeros(1, 4, dtype=torch.int64))


@needs_torch
def test_a_dropped_cache_is_freed() -> None:
    import gc
    import weakref

    emb = nn.Embedding(10, DIM)
    cache = SignatureCache(emb, er.SimHasher(DIM, BITS))
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None  # the embedding's load hook does not keep it alive
    emb.load_state_dict(emb.state_dict())  # and the hook of the dead cache is harmless


@needs_torch
def test_copies_are_stale_until_refreshed(tmp_path: Path) -> None:
    import copy

    model = _model()
    torch.save(model, tmp_path / "whole.pt")  # pickles the cache with its references
    for twin in (copy.deepcopy(model), torch.load(tmp_path / "whole.pt", weights_only=False)):
        assert twin.cache.embedding is twin.items and twin.cache.hasher is twin.retriever
        assert twin.cache.embedding_changed()
        with pytest.raises(ValueError, match="cache is stale"):
            _serve(twin, torch.zeros(1, 4, dtype=torch.int64))
        twin.cache.refresh()
        assert torch.equal(twin.cache.signatures, model.cache.signatures)
        _serve(twin, torch.zeros(1, 4, dtype=torch.int64))



@pytest.mark.cudasim
def test_device_table_saves_its_signatures(tmp_path: Path) -> None:
    """A table on the device is copied to the host once and saved like a host table."""
    from numba import cuda

    weight = np.random.default_rng(5).integers(-3, 4, size=(9, DIM)).astype(np.float32)
    hasher = er.SimHasher(DIM, BITS, seed=0)
    er.SignatureTable(cuda.to_device(weight), hasher).save(tmp_path / "t")
    np.testing.assert_array_equal(er.SignatureTable.load(tmp_path / "t", hasher=hasher).signatures, hasher(weight))
    with pytest.raises(ValueError, match="weight must be a host"):
        er.SignatureTable.load(tmp_path / "t", weight=cuda.to_device(weight))
