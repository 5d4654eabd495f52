"""lpft.vision.paperfigs: the papers' figures plot exactly the published numbers, and runs sit at their means."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import paperfigs  # noqa: E402
from lpft.vision.published import lookup, published_entries  # noqa: E402
from lpft.vision.records import make_record  # noqa: E402
from lpft.vision.table import load_records  # noqa: E402


def _by_gid(fig) -> dict[str, tuple]:
    """gid -> (axes, artist) for every collection of ``fig`` that has one (each gid must be unique)."""
    out = {}
    for ax in fig.axes:
        for c in ax.collections:
            gid = c.get_gid()
            if gid:
                assert gid not in out, f"gid {gid} drawn twice"
                out[gid] = (ax, c)
    return out


def _xy(artist) -> tuple[float, float]:
    (x, y), = artist.get_offsets()
    return float(x), float(y)


def test_lpft_figure_plots_every_published_cell_with_its_interval():
    fig = paperfigs.lpft_accuracy_figure()
    arts = _by_gid(fig)
    kumar = [(i, e) for i, e in enumerate(published_entries()) if e["paper"].startswith("Kumar")]
    assert len(kumar) == 33  # 11 table columns x 3 methods
    for i, e in kumar:
        ax, art = arts[f"published:{i}"]
        x, y = _xy(art)
        assert y == e["value"] and x == paperfigs.LPFT_METHODS.index(e["method"])
        kind = "ID" if e["split"] == "id_test" else "OOD"
        assert ax.get_title().startswith(f"{kind}: {e['column']}")
        if e["ci"]:
            (lo, hi), = [(seg[0][1], seg[1][1]) for seg in arts[f"ci:{i}"][1].get_segments()]
            assert lo == pytest.approx(e["value"] - e["ci"]) and hi == pytest.approx(e["value"] + e["ci"])
        else:
            assert f"ci:{i}" not in arts
    assert not any(g.startswith(("published:", "ci:")) and int(g.split(":")[1]) not in dict(kumar) for g in arts)
    assert "Table 1" in fig._suptitle.get_text() and "Table 2" in fig._suptitle.get_text()


def test_wiseft_figure_plots_published_points_and_names_the_alphas():
    fig, missing = paperfigs.wiseft_figure()
    assert missing == []
    arts = _by_gid(fig)
    entries = published_entries()
    drawn = 0
    for bb in ("clip_vit_l14_336", "clip_vit_b16"):
        for method, alpha, variant, *_ in paperfigs.WISE_ROLES:
            a = lookup(method, bb, "imagenet", "id_test", alpha=alpha, variant=variant)
            b = lookup(method, bb, "imagenet", "ood_avg", alpha=alpha, variant=variant)
            if a is None or b is None:
                continue
            gid = f"published:{entries.index(a)},{entries.index(b)}"
            ax, art = arts[gid]
            assert _xy(art) == (a["value"], b["value"])
            assert a["backbone_paper"] in ax.get_title()
            drawn += 1
    assert drawn == 13  # L/14@336: all 7 roles; B/16: 6 (its LC optimum was not transcribed)
    assert len([g for g in arts if g.startswith("published:")]) == drawn
    # CLIP-paper rows and Table 8's repeat are not drawn
    skipped = {i for i, e in enumerate(entries) if e["variant"] in ("clip_paper", "table8")}
    assert not any(int(i) in skipped for g in arts for i in g.split(":")[1].split(","))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("published α: 0 (zero-shot), 0.5, 1 (fine-tuned)" in t for t in texts) == 2
    for table in ("Table 1", "Table 5", "Table 8"):
        assert table in fig._suptitle.get_text()


@pytest.fixture(scope="module")
def living17_lp_runs(tmp_path_factory):
    """Real LP runs (2 seeds) of tiny_cnn on the living17 miniature fixture."""
    from lpft.vision.data import fixtures
    from lpft.vision.run import main

    tmp = tmp_path_factory.mktemp("liv")
    root = fixtures.build_breeds(tmp / "data", "living17")
    for seed in ("0", "1"):
        main(["--method", "lp", "--backbone", "tiny_cnn", "--benchmark", "living17", "--data-root", str(root),
              "--image-size", "16", "--lp-num-cs", "3", "--limit", "40", "--seed", seed, "--out", str(tmp / "runs"),
              "--quiet"])
    return tmp / "runs"


def _mean_acc(runs: Path, method: str, split: str) -> float:
    vals = [r["value"] for p in runs.rglob("records.jsonl") for r in map(json.loads, p.read_text().splitlines())
            if r["method"] == method and r["eval_split"] == split and r["metric"] == "acc" and r.get("epoch") is None]
    assert len(vals) == 2
    return 100 * statistics.fmean(vals)


def test_lpft_overlay_star_sits_at_the_runs_mean(living17_lp_runs):
    fig = paperfigs.lpft_accuracy_figure(paperfigs.run_points(load_records(living17_lp_runs)))
    arts = _by_gid(fig)
    entries = published_entries()
    for split in ("id_test", "ood_test"):
        pub = lookup("lp", "moco_v2_resnet50", "living17", split)
        pub_ax, pub_art = arts[f"published:{entries.index(pub)}"]
        (gid,) = [g for g in arts if g.startswith(f"run:living17:tiny_cnn:lp:{split}:")]
        ax, star = arts[gid]
        assert ax is pub_ax  # beside the paper's LP point of the same column
        x, y = _xy(star)
        assert y == pytest.approx(_mean_acc(living17_lp_runs, "lp", split), abs=1e-9)
        assert x == pytest.approx(_xy(pub_art)[0] + 0.3)
        assert len(star.get_facecolors()) == 0 or star.get_facecolors()[0][3] == 0  # hollow: another backbone
    assert not any(g.startswith("run:") and ":lp:" not in g for g in arts)  # no FT / LP-FT runs, no stars


def test_wiseft_overlay_on_the_matching_backbone_and_report(tmp_path):
    """Hand-made ImageNet records (no config.json): each star sits at (mean id_test, mean of the per-seed OOD
    average); a backbone without published numbers is reported, not drawn."""
    accs = {("zeroshot", None, 0): (0.60, 0.50, 0.40), ("zeroshot", None, 1): (0.64, 0.52, 0.46),
            ("wiseft", 0.0, 0): (0.60, 0.50, 0.40), ("wiseft", 0.5, 0): (0.75, 0.58, 0.44),
            ("wiseft", 1.0, 0): (0.80, 0.50, 0.30)}
    for bb in ("clip_vit_b16", "clip_vit_l14"):
        for (method, alpha, seed), (idt, r, sk) in accs.items():
            base = dict(run_id=f"{bb}-{method}-{seed}", method=method, backbone=bb, benchmark="imagenet", seed=seed,
                        alpha=alpha, metric="acc", epoch=None, lr=None if method == "zeroshot" else 1e-5)
            recs = [make_record(**base, eval_split=s, shift=sh, value=v)
                    for s, sh, v in (("id_test", "id", idt), ("imagenet_r", "ood", r), ("imagenet_sketch", "ood", sk))]
            path = tmp_path / "runs" / base["run_id"] / "records.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.writelines(json.dumps(x) + "\n" for x in recs)
    fig, missing = paperfigs.wiseft_figure(paperfigs.run_points(load_records(tmp_path / "runs")))
    assert missing == ["imagenet/clip_vit_l14: no published WiSE-FT numbers for this backbone"]
    arts = _by_gid(fig)
    stars = {g: a for g, a in arts.items() if g.startswith("run:")}
    assert all(g.startswith("run:imagenet:clip_vit_b16:") for g in stars) and len(stars) == 4  # zs + 3 alphas
    zs_ax, zs = stars["run:imagenet:clip_vit_b16:zeroshot:ood_avg:None:None:None:heldout"]
    assert "ViT-B/16" in zs_ax.get_title()
    assert _xy(zs) == pytest.approx((62.0, 100 * np.mean([(0.50 + 0.40) / 2, (0.52 + 0.46) / 2])))
    _, half = stars["run:imagenet:clip_vit_b16:wiseft:ood_avg:0.5:None:None:heldout"]
    assert _xy(half) == pytest.approx((75.0, 51.0))
    # the run's alpha path is drawn as a line through its stars
    paths = [ln.get_xydata() for ln in zs_ax.lines if ln.get_linestyle() == ":"]
    assert any(p.shape == (3, 2) and np.allclose(p, [[60.0, 45.0], [75.0, 51.0], [80.0, 40.0]]) for p in paths)


def test_make_paper_figures_writes_pngs_and_reports(tmp_path, living17_lp_runs):
    from PIL import Image

    res = paperfigs.make_paper_figures(tmp_path / "out", living17_lp_runs, dpi=60, pdf=True)
    assert set(res.paths) == set(paperfigs.FIGURE_NAMES)
    for paths in res.paths.values():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        with Image.open(paths[0]) as im:
            assert im.width > 300 and im.height > 200
    assert res.overlaid == ["paper-lpft_accuracy: living17/tiny_cnn"] and res.not_overlaid == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        paperfigs.make_paper_figures(tmp_path / "out2", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no records.jsonl"):
        paperfigs.make_paper_figures(tmp_path / "out2", tmp_path / "empty")
