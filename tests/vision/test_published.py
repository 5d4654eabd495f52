"""lpft.vision.published: the shipped numbers, their sources, lookup and differences."""

from __future__ import annotations

from collections import Counter

import pytest

from lpft.vision.published import citation, difference, lookup, published_entries

LPFT_SPLITS = {"cifar10": {"id_test", "stl10", "cifar10_1"}, "living17": {"id_test", "ood_test"},
               "entity30": {"id_test", "ood_test"}, "domainnet": {"id_test", "real", "painting", "clipart"},
               "fmow": {"id_test", "africa", "europe"}}
IMAGENET_SPLITS = {"id_test", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet", "ood_avg",
                   "avg_ref_shifts"}


def test_entries_are_well_formed_and_cite_their_source():
    entries = published_entries()
    assert len(entries) > 100
    for e in entries:
        assert 0 < e["value"] <= 100
        assert e["paper"].startswith(("Kumar et al. 2022", "Wortsman et al. 2022"))
        assert e["table"].startswith("Table") and e["column"] and e["backbone_paper"]
        assert e["method"] in ("lp", "ft", "lpft", "wiseft", "zeroshot")
        assert (e["alpha"] is not None) == (e["method"] == "wiseft")
        if e["split"] is not None:
            allowed = IMAGENET_SPLITS if e["benchmark"] == "imagenet" else LPFT_SPLITS[e["benchmark"]]
            assert e["split"] in allowed, e
        else:
            assert "note" in e  # an unmapped column says why
    keys = Counter((e["method"], e["backbone"], e["benchmark"], e["split"], e["alpha"], e["variant"])
                   for e in entries if e["split"] is not None)
    assert max(keys.values()) == 1


@pytest.mark.parametrize(
    "args, kw, value, ci, table",
    [
        (("lp", "moco_v2_resnet50", "living17", "id_test"), {}, 96.5, 0.2, "Table 1"),
        (("lpft", "moco_v2_resnet50", "cifar10", "stl10"), {}, 90.7, 0.3, "Table 2"),
        (("ft", "moco_v2_resnet50", "cifar10", "cifar10_1"), {}, 92.3, 0.4, "Table 2"),
        (("lpft", "clip_rn50", "domainnet", "id_test"), {}, 91.6, 0.0, "Table 1"),
        (("ft", "moco_v2_resnet50", "entity30", "ood_test"), {}, 60.7, 0.2, "Table 2"),
        (("zeroshot", "clip_vit_b16", "imagenet", "imagenet_r"), {}, 77.6, None, "Table 8"),
        (("ft", "clip_vit_b16", "imagenet", "imagenet_a"), {}, 36.7, None, "Table 8"),
        (("wiseft", "clip_vit_b16", "imagenet", "imagenet_sketch"), {"alpha": 0.5}, 53.9, None, "Table 8"),
        (("wiseft", "clip_vit_b16", "imagenet", "ood_avg"), {"alpha": "oracle"}, 63.5, None, "Table 8"),
        (("wiseft", "clip_vit_l14_336", "imagenet", "id_test"), {"alpha": "oracle"}, 87.1, None, "Table 1"),
        (("zeroshot", "clip_vit_l14_336", "imagenet", "objectnet"), {}, 69.1, None, "Table 1"),
        (("zeroshot", "clip_vit_l14_336", "imagenet", "objectnet"), {"variant": "table8"}, 68.5, None, "Table 8"),
        (("wiseft", "clip_vit_l14_336", "imagenet", "imagenet_r"), {"alpha": 0.5, "variant": "LC"}, 89.6, None,
         "Table 1"),
    ],
)
def test_lookup_known_cells(args, kw, value, ci, table):
    e = lookup(*args, **kw)
    assert e is not None
    assert e["value"] == value and e["ci"] == ci and e["table"].startswith(table)
    assert table in citation(e)


@pytest.mark.parametrize(
    "args, kw",
    [
        (("lp", "moco_v2_resnet50", "domainnet", "real"), {}),  # ambiguous OOD column: not mapped
        (("lp", "clip_rn50", "domainnet", "ood_avg"), {}),
        (("lp", "moco_v2_resnet50", "fmow", "africa"), {}),  # MoCo-TP backbone, ambiguous split
        (("lp", "resnet50", "living17", "id_test"), {}),  # not the paper's backbone
        (("lpft", "clip_vit_b16", "imagenet", "id_test"), {}),  # LP-FT ImageNet columns not found
        (("wiseft", "clip_vit_b16", "imagenet", "id_test"), {}),  # WiSE-FT needs an alpha
        (("ft", "efficientnet_lite0", "digits", "id_test"), {}),
    ],
)
def test_lookup_leaves_unknown_cells_empty(args, kw):
    assert lookup(*args, **kw) is None


def test_alpha_lookup_accepts_ints_and_floats():
    assert lookup("wiseft", "clip_vit_b16", "imagenet", "id_test", alpha=0.5)["value"] == 81.7
    assert lookup("wiseft", "clip_vit_b16", "imagenet", "id_test", alpha=1) is None


def test_difference():
    e = lookup("ft", "moco_v2_resnet50", "living17", "ood_test")
    assert difference(80.0, e) == pytest.approx(80.0 - 77.8)
    assert difference(None, e) is None and difference(80.0, None) is None


def test_sources_are_the_papers_never_project_notes():
    for e in published_entries():
        assert "PROTOCOL" not in e["source"] and "THEORY" not in e["source"] and ".md" not in e["source"]
        assert e["source"].startswith(("Kumar et al. 2022", "Wortsman et al. 2022"))
        assert "PROTOCOL" not in e.get("note", "")


@pytest.mark.parametrize(
    "split, lc_half, e2e_half, lc_alpha1",
    [("id_test", 78.2, 81.7, 79.9), ("imagenet_r", 77.2, 78.7, 70.8), ("imagenet_a", 51.2, 52.2, 46.4),
     ("ood_avg", 61.0, 63.0, 57.2)],
)
def test_b16_linear_classifier_rows_from_table5(split, lc_half, e2e_half, lc_alpha1):
    lc = lookup("wiseft", "clip_vit_b16", "imagenet", split, alpha=0.5, variant="LC")
    assert lc["value"] == lc_half and lc["table"].startswith("Table 5") and lc["row"] == "LC, α=0.50"
    assert lookup("wiseft", "clip_vit_b16", "imagenet", split, alpha=0.5)["value"] == e2e_half  # E2E, Table 8
    assert lookup("lp", "clip_vit_b16", "imagenet", split)["value"] == lc_alpha1
    # the B/16 LC optimum is not transcribed: no LC oracle entry (and never the E2E one in its place)
    assert lookup("wiseft", "clip_vit_b16", "imagenet", split, alpha="oracle", variant="LC") is None


def test_lc_entries_are_wiseft_rows_for_both_clip_vits():
    lc = [e for e in published_entries() if e["variant"] == "LC"]
    assert {e["backbone"] for e in lc} == {"clip_vit_l14_336", "clip_vit_b16"}
    assert all(e["method"] == "wiseft" and e["alpha"] in (0.5, "oracle") for e in lc)
