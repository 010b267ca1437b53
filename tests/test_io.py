"""Tests of reading files and validating count layers."""

import sys
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from velode._errors import InputError
from velode._io import read, validate
from velode.datasets import synthetic


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.strip() == message and message
    return message


def _counts(n_cells=6, n_genes=4, sparse=False, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    s = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32) + 1
    u = rng.poisson(1.0, size=(n_cells, n_genes)).astype(np.float32) + 1
    if sparse:
        s, u = sp.csr_matrix(s), sp.csr_matrix(u)
    return ad.AnnData(X=s.copy(), layers={"spliced": s, "unspliced": u})


# --------------------------------------------------------------------------- read


def test_read_round_trip(tmp_path):
    adata = synthetic(30, 7, seed=2)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    for p in (path, str(path)):
        back = read(p)
        assert back.shape == (30, 7)
        np.testing.assert_array_equal(back.layers["unspliced"], adata.layers["unspliced"])
        np.testing.assert_array_equal(back.obs["true_time"], adata.obs["true_time"])
        assert list(back.var_names) == list(adata.var_names)


def test_read_uppercase_extension(tmp_path):
    path = tmp_path / "toy.H5AD"
    synthetic(5, 3).write_h5ad(path)
    assert read(path).shape == (5, 3)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        read(tmp_path / "nope.h5ad")
    assert "not found" in _one_line_error(info) and "nope.h5ad" in str(info.value)


def test_read_directory(tmp_path):
    d = tmp_path / "dir.h5ad"
    d.mkdir()
    with pytest.raises(InputError) as info:
        read(d)
    assert "directory" in _one_line_error(info)


@pytest.mark.parametrize("name", ["counts.csv", "counts", "counts.h5"])
def test_read_wrong_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError) as info:
        read(path)
    message = _one_line_error(info)
    assert ".h5ad" in message and ".loom" in message and name in message


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not an HDF5 file\n" * 10, b"\x89HDF\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "garbage", "bad-hdf5-header"],
)
def test_read_unreadable_h5ad(tmp_path, content):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read(path)
    message = _one_line_error(info)
    assert "cannot read" in message and "broken.h5ad" in message and "complete" in message
    assert info.value.__cause__ is not None


def test_read_truncated_h5ad(tmp_path):
    good = tmp_path / "good.h5ad"
    synthetic(200, 50).write_h5ad(good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.h5ad"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read(bad)
    assert "truncated.h5ad" in _one_line_error(info)


def test_read_loom_without_loompy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "loompy", None)  # import loompy now raises ImportError
    path = tmp_path / "x.loom"
    path.write_bytes(b"")
    with pytest.raises(InputError) as info:
        read(path)
    assert "pip install loompy" in _one_line_error(info)


def test_read_loom_keeps_layers_and_annotations(tmp_path):
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=rng.poisson(2.0, (6, 4)).astype(np.float32),
        layers={k: rng.poisson(2.0, (6, 4)).astype(np.float32) for k in ("spliced", "unspliced")},
    )
    a.obs["clusters"] = ["a", "b"] * 3
    path = tmp_path / "x.loom"
    a.write_loom(path)
    b = read(path)
    assert b.shape == (6, 4)
    u = b.layers["unspliced"]
    np.testing.assert_array_equal(u.toarray() if hasattr(u, "toarray") else np.asarray(u), a.layers["unspliced"])
    assert list(b.obs["clusters"]) == list(a.obs["clusters"])


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize("sparse", [False, True])
def test_validate_accepts_clean_counts(sparse):
    adata = _counts(sparse=sparse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = validate(adata)
    assert out is adata


def test_validate_integer_counts():
    adata = _counts()
    adata.layers["spliced"] = adata.layers["spliced"].astype(np.int64)
    assert validate(adata) is adata


def test_validate_missing_layer():
    adata = _counts()
    del adata.layers["unspliced"]
    with pytest.raises(InputError) as info:
        validate(adata)
    message = _one_line_error(info)
    assert "'unspliced'" in message and "missing" in message
    assert "['spliced']" in message  # the layers that are present
    assert "velocyto or kb" in message


def test_validate_no_layers_at_all():
    adata = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))
    with pytest.raises(InputError) as info:
        validate(adata)
    assert "'spliced'" in _one_line_error(info)


def test_validate_custom_layers():
    adata = _counts()
    adata.layers["ambiguous"] = adata.layers["spliced"].copy()
    assert validate(adata, layers=("spliced", "ambiguous")) is adata
    with pytest.raises(InputError, match="'total'"):
        validate(adata, layers=("total",))


def test_validate_mismatched_layer_shape():
    adata = _counts(n_cells=6, n_genes=4)
    # anndata refuses such an assignment through the public API; put it in the backing store instead
    adata._layers["unspliced"] = np.ones((6, 3), dtype=np.float32)
    with pytest.raises(InputError) as info:
        validate(adata)
    message = _one_line_error(info)
    assert "shape" in message and "(6, 4)" in message


def test_validate_not_anndata():
    with pytest.raises(InputError, match="AnnData"):
        validate(np.ones((3, 3)))


@pytest.mark.parametrize("axis", ["cells", "genes"])
def test_validate_empty(axis):
    adata = _counts()
    empty = adata[:0].copy() if axis == "cells" else adata[:, :0].copy()
    with pytest.raises(InputError) as info:
        validate(empty)
    message = _one_line_error(info)
    assert "0 cells" in message if axis == "cells" else "0 genes" in message


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("bad", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite"), (-2.0, "negative")]
)
def test_validate_bad_values(sparse, bad, word):
    adata = _counts(sparse=sparse)
    s = adata.layers["spliced"]
    if sparse:
        s = s.tolil()
    s[1, 2] = bad
    s[3, 0] = bad
    adata.layers["spliced"] = sp.csr_matrix(s) if sparse else s
    with pytest.raises(InputError) as info:
        validate(adata)
    message = _one_line_error(info)
    assert word in message and "'spliced'" in message and "2 " in message


def test_validate_negative_in_unspliced_names_the_layer():
    adata = _counts()
    adata.layers["unspliced"][0, 0] = -1
    with pytest.raises(InputError, match=r"layers\['unspliced'\] has 1 negative"):
        validate(adata)


@pytest.mark.parametrize("sparse", [False, True])
def test_validate_drops_all_zero_genes(sparse):
    adata = _counts(n_cells=6, n_genes=5, sparse=sparse)
    for name in ("spliced", "unspliced"):
        x = adata.layers[name]
        x = x.toarray() if sparse else x
        x[:, [1, 3]] = 0
        adata.layers[name] = sp.csr_matrix(x) if sparse else x
    # a gene zero in spliced only is kept
    s = adata.layers["spliced"]
    s = s.toarray() if sparse else s
    s[:, 4] = 0
    adata.layers["spliced"] = sp.csr_matrix(s) if sparse else s
    adata.var["note"] = list("abcde")
    before = adata.copy()
    with pytest.warns(UserWarning, match="dropped 2 of 5 genes"):
        out = validate(adata)
    assert out is not adata
    assert list(out.var_names) == [adata.var_names[i] for i in (0, 2, 4)]
    assert list(out.var["note"]) == ["a", "c", "e"]
    # the input is untouched
    assert adata.shape == before.shape
    for name in ("spliced", "unspliced"):
        a, b = adata.layers[name], before.layers[name]
        np.testing.assert_array_equal(a.toarray() if sparse else a, b.toarray() if sparse else b)


def test_validate_all_genes_zero():
    adata = _counts()
    adata.layers["spliced"][:] = 0
    adata.layers["unspliced"][:] = 0
    with pytest.raises(InputError) as info:
        validate(adata)
    assert "all 4 genes" in _one_line_error(info)


def test_validate_sparse_explicit_zeros_count_as_zero():
    s = sp.csr_matrix(np.array([[1.0, 0.0], [2.0, 0.0]], dtype=np.float32))
    s.data[:] = [1.0, 2.0]
    u = sp.csr_matrix((np.array([0.0, 0.0], dtype=np.float32), ([0, 1], [1, 1])), shape=(2, 2))
    adata = ad.AnnData(layers={"spliced": s, "unspliced": u}, shape=(2, 2))
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        out = validate(adata)
    assert out.n_vars == 1
