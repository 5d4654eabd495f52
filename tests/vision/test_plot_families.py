"""lpft.vision.plot with many method families (options, soups, WiSE-FT sources, BN statistics): each family its
own (colour, marker), the legend off every axes, limits around the data, WiSE-FT alpha labels apart, feature
distortion per family. Synthetic records shaped like a real digits sweep (ID 97-100%, OOD 75-92%)."""

from __future__ import annotations

import colorsys
import itertools
import math
import random

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation, Text

from lpft.vision.plot import scatter_figure
from lpft.vision.plotpanels import alpha_figure, distortion_figure
from lpft.vision.plotstyle import COLORS, REFERENCE, family_key, family_styles, logit_ticks, wrap_label
from lpft.vision.records import make_record
from lpft.vision.table import build_series

SPLITS = (("id_val", "id"), ("id_test", "id"), ("typeset", "ood"), ("corrupted", "ood"))
FT_OPTIONS = (None, "freeze_embed=True", "l2sp_alpha=0.01,l2sp_beta=0.01",
              "lora_rank=4,lora_alpha=4.0,lora_targets=default", "ssf=True",
              "tpgm=True,tpgm_frequency=1,tpgm_steps=200,tpgm_lr=0.01", "train_blocks=first", "train_blocks=last",
              "weight_average=ema,ema_decay=0.999", "weight_average=swa,swa_start_epoch=23")
LPFT_OPTIONS = (None, "l2sp_alpha=0.01,l2sp_beta=0.01", "ssf=True")
SQ_CHANGE = {None: 0.3, "l2sp_alpha=0.01,l2sp_beta=0.01": 0.03}  # FT families with feature records


def _records():
    rng = random.Random(1)
    recs = []

    def run(method, lr, seed, alphas=(None,), bn=(None,), **extra):
        rid = f"{method}-{extra}-{lr}-{seed}"
        for alpha, b in itertools.product(alphas, bn):
            for split, shift in SPLITS:
                v = rng.uniform(0.97, 0.995) if shift == "id" else rng.uniform(0.75, 0.92)
                if split == "id_test" and seed == 2 and method == "soup":
                    v = 1.0  # a seed at 100%: the logit axes must still show it
                kw = dict(extra, **({"bn_stats": b} if b else {}))
                recs.append(make_record(run_id=rid, method=method, backbone="simclr", benchmark="digits",
                                        eval_split=split, shift=shift, metric="acc", value=v, seed=seed,
                                        alpha=alpha, lr=lr, epoch=None, **kw))
                if method == "ft" and extra.get("options") in SQ_CHANGE and split != "id_val":
                    scale = SQ_CHANGE[extra.get("options")] * (1 + 0.01 * seed)
                    recs.append(make_record(run_id=rid, method=method, backbone="simclr", benchmark="digits",
                                            eval_split=split, shift=shift, metric="feature_sq_change",
                                            value=scale, seed=seed, alpha=None, lr=lr, epoch=None, **extra))

    for seed in range(3):
        run("lp", None, seed)
        for opt in FT_OPTIONS:
            for lr in (0.01, 0.03):
                run("ft", lr, seed, **({"options": opt} if opt else {}))
        for opt in LPFT_OPTIONS:
            run("lpft", 0.003, seed, **({"options": opt} if opt else {}))
        run("wiseft", 0.001, seed, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), bn=("interpolated", "recomputed"))
        run("wiseft", 0.1, seed, alphas=(0.0, 0.5, 1.0), wiseft_source="lpft[lora_rank=4]")
        for variant in ("greedy", "uniform"):
            run("soup", None, seed, variant=variant)
    return recs


@pytest.fixture(scope="module")
def records():
    return _records()


@pytest.fixture(scope="module")
def group(records):
    (g,) = build_series(records).values()
    assert len(g) >= 12
    return g


@pytest.fixture(scope="module")
def figures(group):
    return {"linear": scatter_figure("t", group, logit_axes=False),
            "logit": scatter_figure("t", group, logit_axes=True)}


def _hue_gap(c1, c2):
    d = abs(colorsys.rgb_to_hls(*to_rgb(c1))[0] - colorsys.rgb_to_hls(*to_rgb(c2))[0])
    return min(d, 1 - d)  # hue is an angle: red sits at both 0 and 1


def test_every_family_has_its_own_colour_and_marker(group, figures):
    styles = family_styles(group)
    pairs = [(styles[family_key(s)].color, styles[family_key(s)].marker) for s in group]
    assert len(set(pairs)) == len(group) == 19
    for s in group:  # every variant keeps its method's hue; the plain family its exact colour and a circle
        st = styles[family_key(s)]
        assert _hue_gap(st.color, COLORS[s.method]) < 0.02, s.label
        if s.options is None and s.soup_variant in (None, "greedy") and s.bn_stats in (None, "interpolated") \
                and "from" not in s.label:
            assert (st.color, st.marker) == (to_hex(COLORS[s.method]), "o"), s.label
    for fig in figures.values():  # the legend shows the same pairs, one entry per family, with its full label
        (leg,) = fig.legends
        handles = [h for h in leg.legend_handles if isinstance(h, Line2D) and h.get_marker() not in (None, "None")]
        shown = [(to_hex(h.get_color()), h.get_marker()) for h in handles]
        assert sorted(shown) == sorted(pairs)
        texts = ["".join(t.get_text().split()) for t in leg.get_texts()]
        for s in group:
            assert any(t.startswith("".join(s.label.split())) for t in texts), s.label


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legend_never_covers_an_axes(group, records, figures):
    figs = dict(figures, alpha=alpha_figure("t", group), distortion=distortion_figure("t", records, group))
    for name, fig in figs.items():
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw_without_rendering()
        (leg,) = fig.legends
        box = leg.get_window_extent(renderer)
        assert box.width > 0 and box.height > 0
        for ax in fig.axes:
            assert ax.get_legend() is None, name
            assert ax.bbox.width > 50 and ax.bbox.height > 50, name  # the layout kept room for the data
            assert not _overlap(box, ax.get_window_extent(renderer)), name
            assert not _overlap(box, ax.get_tightbbox(renderer)), name  # nor its tick labels and titles


def _data_points(ax):
    pts = []
    for art in ax.get_children():
        if isinstance(art, PathCollection):
            pts += [tuple(p) for p in art.get_offsets()]
        elif isinstance(art, Line2D) and art.get_gid() != REFERENCE and len(art.get_xdata()):
            pts += list(zip(art.get_xdata(), art.get_ydata()))
        elif isinstance(art, LineCollection):
            pts += [tuple(p) for seg in art.get_segments() for p in seg]
    return np.array(pts, dtype=float)


@pytest.mark.parametrize("kind", ["linear", "logit"])
def test_limits_hold_every_point_with_a_margin(figures, kind):
    fig = figures[kind]
    for ax in fig.axes:
        pts = _data_points(ax)
        assert len(pts) > 100
        for (lo, hi), v in ((ax.get_xlim(), pts[:, 0]), (ax.get_ylim(), pts[:, 1])):
            assert lo < v.min() and v.max() < hi  # every point inside, none on the frame
            if kind == "linear":  # and the range fits the data: margins of a few % of its span
                span = v.max() - v.min()
                assert v.min() - lo < 0.1 * span and hi - v.max() < 0.1 * span
            else:  # logit axes: 100% is drawn just beyond the other points, not at 99.99%
                assert hi < 0.9999 and 0 < lo
        refs = [ln for ln in ax.get_lines() if ln.get_gid() == REFERENCE]
        if kind == "linear":  # OOD 75-92% never meets ID 97-100%: no y = x in range, none drawn
            assert refs == []
        else:
            assert len(refs) == 1  # the fitted line
    if kind == "logit":
        assert "ID 100% drawn at" in fig.axes[0].get_xlabel()


def test_diagonal_drawn_where_in_range(group):
    # the same families with OOD accuracies on both sides of y = x: the diagonal is drawn, inside the limits
    recs = []
    for s in group[:4]:
        for seed, (i, o) in enumerate(((0.6, 0.5), (0.7, 0.8))):
            for split, shift in SPLITS:
                recs.append(make_record(run_id=f"{s.method}{seed}{s.options}", method=s.method, backbone="b",
                                        benchmark="digits", eval_split=split, shift=shift, metric="acc",
                                        value=i if shift == "id" else o, seed=seed, alpha=None,
                                        lr=0.01 if s.method != "lp" else None, epoch=None,
                                        **({"options": s.options} if s.options else {})))
    (g,) = build_series(recs).values()
    ax = scatter_figure("t", g, logit_axes=False).axes[0]
    (diag,) = [ln for ln in ax.get_lines() if ln.get_gid() == REFERENCE]
    xs, ys = diag.get_data()
    assert list(xs) == list(ys)
    assert ax.get_xlim()[0] <= xs[0] < xs[1] <= ax.get_xlim()[1]
    assert ax.get_ylim()[0] <= ys[0] < ys[1] <= ax.get_ylim()[1]


@pytest.mark.parametrize("kind", ["linear", "logit"])
def test_wiseft_alpha_labels_only_at_0_half_1_and_apart(figures, kind):
    fig = figures[kind]
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        anns = [a for a in ax.texts if isinstance(a, Annotation)]
        texts = [a.get_text() for a in anns]
        assert set(texts) == {"α=0", "α=0.5", "α=1"}
        assert texts.count("α=0.5") == 3  # one per WiSE-FT family (BN interpolated, recomputed, from LoRA)
        boxes = [Text.get_window_extent(a, renderer) for a in anns]  # the text, without its leader line
        for b1, b2 in itertools.combinations(boxes, 2):
            assert not _overlap(b1, b2)
        axbox = ax.get_window_extent(renderer)
        assert all(axbox.x0 <= b.x0 and b.x1 <= axbox.x1 and axbox.y0 <= b.y0 and b.y1 <= axbox.y1 for b in boxes)


def test_distortion_bars_per_family_not_merged(group, records):
    fig = distortion_figure("t", records, group)
    ax = fig.axes[0]
    heights = sorted({round(p.get_height(), 6) for p in ax.patches if isinstance(p, Rectangle) and p.get_height()})
    # ft and ft [l2sp...] at the selected lr, mean over seeds 0-2 of scale * (1 + 0.01 seed): two families, two bars
    assert heights == [round(0.03 * 1.01, 6), round(0.3 * 1.01, 6)]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["ft", "ft [l2sp_alpha=0.01,l2sp_beta=0.01]"]


def test_wrap_label_and_logit_ticks():
    text = "ft [tpgm=True,tpgm_frequency=1,tpgm_steps=200,tpgm_lr=0.01] (residual: typeset -0.4, ood_avg +0.7 pp)"
    wrapped = wrap_label(text, 40)
    assert all(len(ln) <= 40 for ln in wrapped.split("\n")) and wrapped.count("\n") >= 2
    assert "".join(wrapped.split()) == "".join(text.split())  # nothing lost
    assert "+0.7 pp)" in wrapped  # a number keeps its unit
    for lo, hi in ((0.97, 0.9995), (0.75, 0.92), (0.5, 0.51), (0.01, 0.99), (0.999, 0.99999)):
        ticks = logit_ticks(lo, hi)
        z = [math.log(t / (1 - t)) for t in ticks]
        assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks), (lo, hi, ticks)
        assert min(np.diff(z)) >= (math.log(hi / (1 - hi)) - math.log(lo / (1 - lo))) / 7 - 1e-9
