"""Tests of the offline ``digits`` benchmark (lpft/vision/data/digits.py).

Everything here runs in a few seconds: the typeset split is rendered once per process (~1 s) and cached.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from lpft.vision.data import get_benchmark, list_benchmarks, load_split
from lpft.vision.data import digits as dg

ALL_SPLITS = ["id_train", "id_val", "id_test", "typeset", "corrupted"]
N_HANDWRITTEN = 1797  # size of sklearn's load_digits


@pytest.fixture(scope="module")
def splits():
    return {s: load_split("digits", None, s) for s in ALL_SPLITS}


@pytest.fixture(scope="module")
def arrays(splits):
    return {s: ds.arrays() for s, ds in splits.items()}


@pytest.fixture(scope="module")
def pixel_lr(arrays):
    """Logistic regression on the raw 64 pixels (scaled to 0-1), trained on id_train."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X, y = arrays["id_train"]
    # one BLAS thread: with torch's OpenMP pool loaded, multi-threaded lbfgs is ~100x slower on 2 cores
    with threadpool_limits(1):
        clf = LogisticRegression(max_iter=5000).fit(X / 16.0, y)
    return {s: clf.score(Xs / 16.0, ys) for s, (Xs, ys) in arrays.items()}


def test_registered_declaration():
    assert "digits" in list_benchmarks()
    b = get_benchmark("digits")
    assert b.needs_root is False
    assert b.classnames == [str(k) for k in range(10)]
    assert b.splits == {"id_train": "id", "id_val": "id", "id_test": "id", "typeset": "ood", "corrupted": "ood"}
    assert b.ood_splits == ["typeset", "corrupted"]
    assert len(b.templates) >= 2 and all(t.count("{}") == 1 for t in b.templates)
    assert "no data root" in b.layout and b.how_to_get


def test_sizes(splits):
    n = {s: len(ds) for s, ds in splits.items()}
    assert n["id_train"] + n["id_val"] + n["id_test"] == N_HANDWRITTEN
    for s, frac in zip(("id_train", "id_val", "id_test"), dg.SPLIT_FRACTIONS):
        assert abs(n[s] - frac * N_HANDWRITTEN) <= 1, (s, n[s])
    assert n["corrupted"] == n["id_test"]
    assert n["typeset"] == len(dg.FONT_FILES) * 10 * dg.TYPESET_VARIANTS
    for s, ds in splits.items():
        assert ds.split_info["size"] == n[s]
    info = splits["id_val"].split_info
    assert info["split_seed"] == dg.SPLIT_SEED and info["id_sizes"]["id_test"] == n["id_test"]


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_labels_and_values(arrays, split):
    X, y = arrays[split]
    assert X.dtype == np.float64 and X.ndim == 2 and X.shape[1] == 64 and len(X) == len(y)
    assert y.min() >= 0 and y.max() <= 9
    assert set(np.unique(y).tolist()) == set(range(10)), "every class must occur"
    assert X.min() >= 0 and X.max() <= 16
    assert np.array_equal(X, np.rint(X)), "values are integer block counts"
    assert X.max() == 16, "some blocks are fully inked"


def test_id_splits_disjoint_and_match_sklearn(splits):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = {s: splits[s].source_indices for s in ("id_train", "id_val", "id_test")}
    for a in idx:
        for b in idx:
            if a < b:
                assert not set(idx[a].tolist()) & set(idx[b].tolist()), (a, b)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(N_HANDWRITTEN))
    for s, i in idx.items():
        X, y = splits[s].arrays()
        np.testing.assert_array_equal(X, d.data[i])
        np.testing.assert_array_equal(y, d.target[i])
    # stratified: each class's share in id_train is within one item of 60%
    ytr = splits["id_train"].arrays()[1]
    for k in range(10):
        assert abs((ytr == k).sum() - 0.6 * (d.target == k).sum()) <= 1


def test_deterministic_reload(arrays):
    """Two loads are equal, including a fresh render of the typeset digits (caches cleared)."""
    for s in ALL_SPLITS:
        X, y = load_split("digits", None, s).arrays()
        np.testing.assert_array_equal(X, arrays[s][0])
        np.testing.assert_array_equal(y, arrays[s][1])
    for f in (dg._typeset, dg._corrupted, dg._id_indices, dg.typeset_fonts):
        f.cache_clear()
    for s in ("typeset", "corrupted", "id_train"):
        X, y = dg.digits_arrays(s)
        np.testing.assert_array_equal(X, arrays[s][0])
        np.testing.assert_array_equal(y, arrays[s][1])


def test_arrays_are_copies(splits):
    ds = splits["typeset"]
    X, _ = ds.arrays()
    X[:] = -1
    assert ds.arrays()[0].min() >= 0
    assert dg.digits_arrays("typeset")[0].min() >= 0


def test_items_are_rgb_images_of_the_values(splits):
    ds = splits["typeset"]
    X, y = ds.arrays()
    for i in (0, 777, len(ds) - 1):
        img, label = ds[i]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
        assert label == y[i] and isinstance(label, int)
        a = np.asarray(img)
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
        expected = np.rint(X[i].reshape(8, 8) * 255 / 16)
        np.testing.assert_array_equal(a[::4, ::4, 0], expected)  # nearest upsampling: 4x4 constant blocks
        np.testing.assert_array_equal(a[3::4, 3::4, 0], expected)


def test_transform_is_applied():
    ds = load_split("digits", None, "id_val", transform=lambda im: np.asarray(im).shape)
    assert ds[0][0] == (32, 32, 3)


def test_root_is_ignored():
    ds = load_split("digits", "/this/path/does/not/exist", "id_val")
    assert len(ds) > 0


def test_typeset_statistics_match_handwriting(arrays):
    """The typeset digits have the handwritten set's ink statistics; only the digits' source changes.

    Bounds: a systematic difference smaller than one per-image standard deviation of the handwritten
    data (mean value: sd 0.54 -> 0.5; fraction of zeros: sd 0.05 -> 0.05), so ink amount alone hardly
    tells the sources apart. Columns 0 and 7 stay (mostly) empty, as in optdigits (0.2% / 2.7% of
    handwritten images have ink there).
    """
    Xh = np.concatenate([arrays[s][0] for s in ("id_train", "id_val", "id_test")])
    Xt = arrays["typeset"][0]
    assert abs(Xt.mean() - Xh.mean()) < 0.5, (Xt.mean(), Xh.mean())
    assert abs((Xt == 0).mean() - (Xh == 0).mean()) < 0.05, ((Xt == 0).mean(), (Xh == 0).mean())
    t8 = Xt.reshape(-1, 8, 8)
    assert (t8[:, :, 0] > 0).mean() <= 0.05 and (t8[:, :, 7] > 0).mean() <= 0.05
    # the digits fill the box height like optdigits: top and bottom rows carry ink in most images
    assert (t8[:, 0, :].sum(1) > 0).mean() > 0.5 and (t8[:, 7, :].sum(1) > 0).mean() > 0.5
    # not a copy of handwriting: no typeset image equals a handwritten one
    hw = {row.tobytes() for row in Xh}
    assert not any(row.tobytes() in hw for row in Xt)


def test_corrupted_is_noisy_id_test(arrays):
    Xc, yc = arrays["corrupted"]
    Xt, yt = arrays["id_test"]
    np.testing.assert_array_equal(yc, yt)
    assert np.abs(Xc - Xt).mean() > 1.0, "the corruption changes the values"
    assert np.corrcoef(Xc.ravel(), Xt.ravel())[0, 1] > 0.5, "but keeps the digits"


def test_pixel_lr_shift(pixel_lr):
    """Pixel logistic regression: high ID accuracy, clearly lower on both OOD splits (a real shift)."""
    assert pixel_lr["id_test"] > 0.9 and pixel_lr["id_val"] > 0.9
    assert pixel_lr["id_test"] - pixel_lr["typeset"] > 0.1, pixel_lr
    assert pixel_lr["id_test"] - pixel_lr["corrupted"] > 0.1, pixel_lr
    assert pixel_lr["typeset"] > 0.3, "typeset digits must still be recognisable (chance is 0.1)"


def test_unknown_split_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        load_split("digits", None, "id_tset")
    for s in ALL_SPLITS:
        assert s in str(e.value)
    with pytest.raises(ValueError, match="typeset"):
        dg.digits_arrays("nope")
    with pytest.raises(ValueError, match="corrupted"):
        get_benchmark("digits").load(None, "nope")


def test_fonts_all_render(splits):
    fonts = dg.typeset_fonts()
    assert [p.name for p in fonts] == list(dg.FONT_FILES)
    assert splits["typeset"].split_info["fonts"] == list(dg.FONT_FILES)
    # a face without digit glyphs (matplotlib ships DejaVuSansDisplay with a handful of glyphs) is refused
    display = dg.font_dir() / "DejaVuSansDisplay.ttf"
    if display.exists():
        with pytest.raises(ValueError, match="no glyph"):
            dg.render_glyph(display, 3)
    with pytest.raises(ValueError, match="0..9"):
        dg.render_glyph(fonts[0], 10)
    g = dg.render_glyph(fonts[0], 1)
    assert g.dtype == bool and g.shape[0] > g.shape[1] and g[0].any() and g[-1].any()


def test_optdigits_preprocessing_units():
    full = np.ones((32, 32), bool)
    assert (dg.block_count(full) == 16).all()
    half = np.zeros((32, 32), bool)
    half[:, :2] = True
    bc = dg.block_count(half)
    assert (bc[:, 0] == 8).all() and bc[:, 1:].sum() == 0
    with pytest.raises(ValueError, match="32x32"):
        dg.block_count(np.ones((8, 8)))
    # a tall bar fills the box height, centred
    tall = np.zeros((100, 100), bool)
    tall[10:90, 40:50] = True
    b = dg.optdigits_bitmap(tall)
    rows, cols = np.nonzero(b)
    assert rows.min() == 0 and rows.max() == 31
    assert abs((cols.min() + cols.max()) / 2 - 15.5) <= 1 and cols.max() - cols.min() + 1 == 4
    # a wide block is capped at WIDTH_CAP columns, keeping the outer 8x8 columns empty
    wide = np.ones((20, 200), bool)
    b = dg.optdigits_bitmap(wide)
    cols = np.nonzero(b.any(0))[0]
    assert len(cols) == dg.WIDTH_CAP and b[:, :4].sum() == 0 and b[:, 28:].sum() == 0
    with pytest.raises(ValueError, match="ink"):
        dg.optdigits_bitmap(np.zeros((10, 10), bool))
    img = dg.values_to_image(np.full(64, 16.0))
    assert img.mode == "RGB" and img.size == (32, 32) and np.asarray(img).min() == 255


def test_fonts_without_digits_are_skipped(monkeypatch):
    monkeypatch.setattr(dg, "FONT_FILES", ("DejaVuSans.ttf", "DejaVuSansDisplay.ttf", "NoSuchFont.ttf"))
    with pytest.warns(UserWarning) as rec:
        fonts = dg.typeset_fonts.__wrapped__()  # bypass the per-process cache
    assert [p.name for p in fonts] == ["DejaVuSans.ttf"]
    text = " ".join(str(w.message) for w in rec)
    assert "NoSuchFont.ttf" in text
    if (dg.font_dir() / "DejaVuSansDisplay.ttf").exists():
        assert "DejaVuSansDisplay.ttf" in text


def test_paper_selection_falls_back_to_heldout_and_says_so():
    assert get_benchmark("digits").paper_selection is None
    for split in ("id_train", "id_val", "typeset"):
        paper = load_split("digits", None, split, selection="paper")
        held = load_split("digits", None, split)
        assert np.array_equal(paper.arrays()[0], held.arrays()[0])
        info = paper.split_info
        assert (info["selection"], info["selection_requested"]) == ("heldout", "paper")
        assert "no official selection set" in info["reason"] and "same_as" not in info
        assert held.split_info["selection"] == "heldout" and "selection_requested" not in held.split_info
