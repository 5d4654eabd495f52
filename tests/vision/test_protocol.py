"""python -m lpft.vision.protocol: every valid combination resolves, the presets match the official recipes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from lpft.vision.backbones import create_backbone, list_backbones  # noqa: E402
from lpft.vision.config import METHODS, is_clip_name  # noqa: E402
from lpft.vision.data import list_benchmarks  # noqa: E402
from lpft.vision.protocol import BACKBONE_FACTS, describe_backbone, describe_recipe, main  # noqa: E402

REQUIRED = ("method", "backbone", "benchmark", "protocol", "optimizer", "lr", "batch_size", "epochs", "schedule",
            "weight_decay", "precision", "freeze_bn", "feature_norm", "selection", "train_transform",
            "eval_transform", "sources")

# The official values, from the LP-FT release (AnanyaKumar/transfer_learning; docs/protocols.md):
# backbone (scripts/codalab.sh), epochs (configs/adaptation/<ds>.yaml:7), batch (resnet50_transfer.yaml:5,
# imagenet.yaml:8), best learning rates (@03dfb07 notebook run paths, issue #3; ImageNet's are unverified).
LPFT_OFFICIAL = {
    "living17": dict(backbone="moco_v2_resnet50", epochs=20, batch_size=64, lr={"ft": 1e-3, "lpft": 1e-4}),
    "entity30": dict(backbone="moco_v2_resnet50", epochs=20, batch_size=64, lr={"ft": 1e-3, "lpft": 3e-5}),
    "cifar10": dict(backbone="moco_v2_resnet50", epochs=20, batch_size=64, lr={"ft": 1e-3, "lpft": 1e-4}),
    "domainnet": dict(backbone="clip_rn50", epochs=50, batch_size=64, lr={"ft": 1e-3, "lpft": 3e-7}),
    "fmow": dict(backbone="mocotp_fmow_resnet50", epochs=50, batch_size=64, lr={"ft": 1e-2, "lpft": 1e-4}),
    "imagenet": dict(backbone="clip_vit_b16", epochs=10, batch_size=128, lr={"ft": 1e-4, "lpft": 1e-5}),
}
# resnet50_transfer.yaml:13-18, living17.yaml:15-18; fp32; the val_metric set; raw CLIP embedding.
LPFT_RECIPE = dict(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="cosine_epoch", warmup_steps=0,
                   grad_clip=None, precision="fp32", selection="paper", select_epoch="best")
# WiSE-FT (mlfoundations/wise-ft README.md:82-84, src/args.py, src/models/finetune.py), CLIP on ImageNet.
WISEFT_OFFICIAL = dict(optimizer="adamw", lr=3e-5, batch_size=512, epochs=10, weight_decay=0.1, warmup_steps=500,
                       schedule="cosine_step", grad_clip=1.0, precision="fp32", freeze_bn=False, select_epoch="last",
                       feature_norm=True, transforms="backbone")
TRANSFORM_SOURCE = {"living17": "datasets_living17.yaml", "entity30": "datasets_entity30.yaml",
                    "cifar10": "datasets_cifar_stl.yaml", "domainnet": "datasets_domainnet.yaml",
                    "fmow": "datasets_fmow.yaml", "imagenet": "datasets_imagenet.yaml"}


def run_json(capsys, *args):
    rc = main([*args, "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_the_table_covers_every_registered_backbone():
    assert list(BACKBONE_FACTS) == list_backbones()


@pytest.mark.parametrize("benchmark", list_benchmarks())
@pytest.mark.parametrize("method", METHODS)
def test_every_combination_resolves_or_is_refused(capsys, benchmark, method):
    for backbone in [None, *list_backbones()]:
        args = ["--benchmark", benchmark, "--method", method] + (["--backbone", backbone] if backbone else [])
        rc, rec, err = run_json(capsys, *args)
        chosen = backbone or (rec or {}).get("backbone")
        if method in ("zeroshot", "flyp") and backbone is not None and not is_clip_name(backbone):
            assert rc == 2 and "CLIP" in err and "clip_vit_b16" in err
            continue
        if method in ("zeroshot", "flyp") and backbone is None and rc == 2:  # the preset is not CLIP
            assert "CLIP" in err
            continue
        assert rc == 0, err
        assert all(k in rec for k in REQUIRED)
        assert rec["benchmark"] == benchmark and rec["method"] == method and rec["backbone"] == chosen
        assert rec["train_transform"].startswith("Compose(ToRGB()")
        assert rec["eval_transform"].startswith("Compose(ToRGB()")
        for field, value in rec.items():  # every value that is set has a citation
            if field in rec["provenance"]:
                assert rec["sources"][field], field
        if method in ("ft", "lpft", "wiseft", "flyp"):
            assert rec["optimizer"] in ("sgd", "adamw") and rec["lr"] > 0 and "lr" in rec["sources"]
        else:
            assert rec["optimizer"] is None and rec["lr"] is None


@pytest.mark.parametrize("benchmark", sorted(LPFT_OFFICIAL))
@pytest.mark.parametrize("method", ["ft", "lpft"])
def test_lpft_presets_match_the_official_values(benchmark, method):
    official = LPFT_OFFICIAL[benchmark]
    rec = describe_recipe(benchmark, method=method)
    assert rec["protocol"] == "lpft" and rec["backbone"] == official["backbone"]
    assert rec["lr"] == official["lr"][method]
    assert rec["epochs"] == official["epochs"] and rec["batch_size"] == official["batch_size"]
    for k, v in LPFT_RECIPE.items():
        assert rec[k] == v, (k, rec[k])
    assert rec["freeze_bn"] is (method == "lpft")
    assert rec["feature_norm"] is (False if is_clip_name(rec["backbone"]) else None)
    assert rec["transforms"] == "benchmark" and TRANSFORM_SOURCE[benchmark] in rec["sources"]["train_transform"]
    assert rec["selection_used"] == "paper" and "id_test" in rec["selection_set"]
    assert "transfer_learning" in rec["sources"]["optimizer"] and "transfer_learning" in rec["sources"]["selection"]
    if benchmark == "imagenet":
        assert "unverified" in rec["sources"]["lr"]
    else:
        assert "03dfb07" in rec["sources"]["lr"]


@pytest.mark.parametrize("benchmark", sorted(LPFT_OFFICIAL))
def test_linear_probe_matches_the_official_probe(benchmark):
    rec = describe_recipe(benchmark, method="lp")
    if benchmark == "imagenet":  # the torch SGD probe, run_adaptation_experiments.py:1495-1499
        assert rec["lp_solver"] == "sgd" and rec["lp_sgd_lrs"] == [0.01, 0.03, 0.1] and rec["lp_sgd_epochs"] == 5
        assert "c_grid" not in rec
    else:  # log_reg_sk.py:69-70, 50 values of C
        assert rec["lp_solver"] == "lbfgs" and rec["lp_num_cs"] == 50
        assert rec["c_grid"] == "np.logspace(log10(1e-07), log10(100), 50)"
        assert "log_reg_sk.py:69" in rec["sources"]["c_grid"]
    assert rec["lp_train_augment"] is True and rec["precision"] == "fp32" and rec["selection"] == "paper"


@pytest.mark.parametrize("backbone", ["clip_vit_b16", "clip_vit_b32", "clip_vit_l14"])
def test_wiseft_preset_matches_the_official_recipe(backbone):
    rec = describe_recipe("imagenet", backbone, method="wiseft")
    assert rec["protocol"] == "wiseft"
    for k, v in WISEFT_OFFICIAL.items():
        assert rec[k] == v, (k, rec[k])
    assert rec["alphas"] == [round(0.1 * i, 1) for i in range(11)]
    for k in ("optimizer", "lr", "batch_size", "epochs", "weight_decay", "schedule", "grad_clip"):
        assert "wise-ft" in rec["sources"][k], k
    assert "RandomResizedCrop(size=(224, 224), scale=(0.9, 1.0)" in rec["train_transform"]
    assert "Flip" not in rec["train_transform"]
    lc = describe_recipe("imagenet", backbone, method="wiseft", wiseft_finetune="linear")
    assert lc["run_id"].startswith(f"imagenet-{backbone}-wiseft-lc-") and "finetune.py:26-32" in lc["sources"][
        "wiseft_finetune"]


def test_zeroshot_and_ambiguities_are_visible(capsys):
    zs = describe_recipe("imagenet", method="zeroshot")
    assert zs["protocol"] is None and zs["feature_norm"] is True and zs["transforms"] == "backbone"
    fmow = describe_recipe("fmow", method="lpft")
    assert fmow["fmow_val"] == "id" and "wilds@v1.1.0" in fmow["sources"]["fmow_val"]
    assert "RequireSize(224)" in fmow["train_transform"] and "std=(0.2289" in fmow["train_transform"]
    held = describe_recipe("cifar10", method="ft", selection="heldout")
    assert held["selection_used"] == "heldout" and held["sources"]["selection"] == "given on the command line"
    digits = describe_recipe("digits", "tiny_cnn", method="ft")
    assert digits["selection_used"] == "heldout" and "no official selection set" in digits["sources"]["selection"]
    assert main(["--benchmark", "living17"]) == 0
    text = capsys.readouterr().out
    assert "resnet50_transfer.yaml:13-17" in text and "datasets_living17.yaml" in text and "std=(0.228" in text


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "nope"], "living17"),
    (["--benchmark", "cifar10", "--backbone", "nope"], "clip_vit_b16"),
    (["--benchmark", "cifar10", "--method", "nope"], "lpft"),
    (["--benchmark", "cifar10", "--backbone", "resnet50", "--method", "zeroshot"], "tiny_clip"),
    (["--benchmark", "cifar10", "--method", "zeroshot"], "CLIP"),
    (["--benchmark", "imagenet", "--method", "zeroshot", "--protocol", "lpft"], "zeroshot"),
    (["--benchmark", "cifar10", "--protocol", "sgd"], "lpft, wiseft"),
    (["--benchmark", "cifar10", "--fmow-val", "ood"], "fmow"),
    (["--benchmark", "cifar10", "--method", "wiseft", "--wiseft-finetune", "linear"], "CLIP"),
])
def test_invalid_requests_exit_2_with_the_valid_choices(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    with pytest.raises(ValueError):
        describe_recipe(args[1], **{a.lstrip("-").replace("-", "_"): v for a, v in zip(args[2::2], args[3::2])})


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "lpft.vision.protocol", "--benchmark", "domainnet", "--method",
                           "lpft", "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["backbone"] == "clip_rn50" and rec["lr"] == 3e-7 and rec["feature_norm"] is False
    assert "Resize(size=(224, 224), interpolation=bicubic" in rec["eval_transform"]


def _check_description(name, image_size=None):
    real = create_backbone(name, pretrained="none", image_size=image_size)
    desc = describe_backbone(name, image_size=image_size)
    for attr in ("family", "image_size", "norm_mean", "norm_std", "interpolation"):
        assert getattr(desc, attr) == getattr(real, attr), (name, attr)
    assert repr(desc.train_transform) == repr(real.train_transform)
    assert repr(desc.eval_transform) == repr(real.eval_transform)


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_clip", "resnet50", "moco_v2_resnet50", "mocotp_fmow_resnet50",
                                  "efficientnet_lite0"])
def test_descriptions_match_the_built_backbones(name):
    _check_description(name)
    if name in ("resnet50", "efficientnet_lite0", "tiny_cnn"):
        _check_description(name, image_size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip_rn50", "clip_vit_b32", "clip_vit_b16", "clip_vit_l14"])
def test_clip_descriptions_match_the_built_backbones(name):
    _check_description(name)
