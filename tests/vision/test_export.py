"""``python -m lpft.vision.export``: small real runs exported to open_clip / timm / torchvision, loaded back by the
library (also in an interpreter without ``lpft``), held to the package model's logits and the recorded accuracies."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import exportfmt  # noqa: E402
from lpft.vision.backbones import Classifier, create_backbone  # noqa: E402
from lpft.vision.backbones.tiny import TINY_CLIP_ARCH  # noqa: E402
from lpft.vision.export import export_run, load_run_model, main, valid_targets  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main as run_main  # noqa: E402

SMALL = ["--quiet", "--limit", "64", "--epochs", "1", "--no-distortion", "--benchmark", "digits"]
TOL = dict(rtol=1e-4, atol=1e-4)


def _run(out: Path, *extra: str) -> Path:
    return run_main([*SMALL, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {
        "ft": _run(out, "--backbone", "tiny_clip", "--method", "ft"),
        "wiseft": _run(out, "--backbone", "tiny_clip", "--method", "wiseft", "--alphas", "0,0.5,1"),
        "lp": _run(out, "--backbone", "tiny_clip", "--method", "lp", "--lp-num-cs", "3"),
    }


def _cfg(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def _ckpt_state(run_dir: Path) -> dict:
    rel = json.loads((run_dir / "history.json").read_text())["selected_checkpoint"]
    return torch.load(run_dir / rel, map_location="cpu", weights_only=True)["model"]


def _pretrained(cfg: dict):
    """The run's pretrained backbone, built here as lpft.vision.run builds it (seeded, same options)."""
    torch.manual_seed(cfg["seed"])
    bb = create_backbone(cfg["backbone"], weights=cfg["weights"], pretrained=cfg["pretrained"],
                         image_size=cfg["image_size"], augment=False, feature_norm=cfg["feature_norm"])
    assert bb.weights_id == cfg["backbone_weights_id"]
    return bb.eval()


def _package_model(cfg: dict, state: dict) -> Classifier:
    model = Classifier(_pretrained(cfg), state["head.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


def _wiseft_state(run_dir: Path, alpha: float) -> dict:
    """(1 - alpha) theta_0 + alpha theta_1, computed here from the run's files (Wortsman et al. 2022, Eq. 1)."""
    cfg = _cfg(run_dir)
    head0 = torch.load(run_dir / "theta0_head.pt", weights_only=True)
    theta0 = {f"backbone.{k}": v for k, v in _pretrained(cfg).state_dict().items()}
    theta0.update({"head.weight": head0["weight"], "head.bias": head0["bias"]})
    theta1 = _ckpt_state(run_dir)
    return {k: (1 - alpha) * v + alpha * theta1[k] if v.is_floating_point() else theta1[k] for k, v in theta0.items()}


def _batch(side: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def _id_test(cfg: dict, backbone):
    """The run's id_test images and labels, through the transform the run recorded."""
    from lpft.vision.data import load_split
    from lpft.vision.run import _limit
    from lpft.vision.transforms import build_transforms

    tf = build_transforms(cfg["benchmark"], backbone, protocol=cfg["protocol"], transforms=cfg["transforms"],
                          augment=False, image_size=cfg["image_size"]).eval
    assert repr(tf) == cfg["transforms_resolved"]["eval"]
    ds = _limit(load_split(cfg["benchmark"], cfg["data_root"], "id_test", tf, selection=cfg["selection"]),
                cfg["limit"], seed=0)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _open_clip_logits(file: Path, sidecar: dict, images: torch.Tensor) -> torch.Tensor:
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(TINY_CLIP_ARCH, pretrained=str(file),
                                                        **sidecar["load_kwargs"])
    head = torch.load(f"{file}.head.pt", weights_only=True)
    with torch.no_grad():
        feats = model.eval().encode_image(images)
    if sidecar["feature_norm"]:  # as the run's features were
        feats = F.normalize(feats, dim=-1)
    return feats @ head["weight"].T + head["bias"]


# A fresh interpreter that imports torch, json and the target library only: it runs each sidecar's printed
# load code on the saved images and compares the logits with those the test saved from the package model.
_FRESH = r"""
import json, sys, torch
cases = json.loads(sys.argv[1])
for case in cases:
    sidecar = json.load(open(case["sidecar"]))
    ns = {"images": torch.load(case["images"], weights_only=True)}
    exec(sidecar["load"], ns)
    want = torch.load(case["logits"], weights_only=True)
    got = ns["logits"].detach().float()
    diff = float((got - want).abs().max())
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (case["sidecar"], diff)
    print(sidecar["target"], "max abs diff", diff)
assert not any(m == "lpft" or m.startswith("lpft.") for m in sys.modules), "lpft was imported"
"""


def _fresh_check(tmp_path: Path, cases: list[tuple[Path, torch.Tensor, torch.Tensor]]) -> str:
    spec = []
    for i, (file, images, logits) in enumerate(cases):
        torch.save(images, tmp_path / f"images{i}.pt")
        torch.save(logits.detach(), tmp_path / f"logits{i}.pt")
        spec.append({"sidecar": f"{file}.json", "images": str(tmp_path / f"images{i}.pt"),
                     "logits": str(tmp_path / f"logits{i}.pt")})
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    res = subprocess.run([sys.executable, "-c", _FRESH, json.dumps(spec)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


# --- open_clip ------------------------------------------------------------------------------------------
def test_clip_ft_exports_to_open_clip(runs, tmp_path, capsys):
    run_dir, file = runs["ft"], tmp_path / "ft.pt"
    sidecar = main([str(run_dir), "--to", "open_clip", "--out", str(file)])
    printed = capsys.readouterr().out
    assert f"open_clip.create_model_and_transforms('{TINY_CLIP_ARCH}', pretrained='{file}', force_quick_gelu=True)" \
        in printed and "QuickGELU" in printed
    cfg = _cfg(run_dir)
    assert sidecar["arch"] == TINY_CLIP_ARCH and sidecar["alpha"] is None and sidecar["feature_norm"] is False
    assert sidecar["classnames"] == [str(i) for i in range(10)] and sidecar["source"]["model"] == "ckpt/best.pt (epoch 1)"
    assert sidecar == json.loads(Path(f"{file}.json").read_text())
    # the package model: the run's pretrained backbone with the selected checkpoint, built here
    package = _package_model(cfg, _ckpt_state(run_dir))
    x = _batch(32)
    got = _open_clip_logits(file, sidecar, x)
    torch.testing.assert_close(got, package(x).detach(), **TOL)
    # fine-tuned image tower, pretrained text tower and temperature
    sd = torch.load(file, weights_only=True)
    pre = _pretrained(cfg).clip_model.state_dict()
    ck = _ckpt_state(run_dir)
    assert set(sd) == set(pre)
    for k in sd:
        want = ck[f"backbone.{k}"] if k.startswith("visual.") else pre[k]
        assert torch.equal(sd[k], want), k
    assert not torch.equal(sd["visual.proj"], pre["visual.proj"])  # fine-tuning moved the tower
    head = torch.load(f"{file}.head.pt", weights_only=True)
    assert torch.equal(head["weight"], ck["head.weight"]) and head["classnames"] == sidecar["classnames"]
    # the exported model on the run's id_test images scores exactly what the run recorded
    images, labels = _id_test(cfg, package.backbone)
    acc = (_open_clip_logits(file, sidecar, images).argmax(1) == labels).float().mean().item()
    recorded = [r["value"] for r in read_records(run_dir / "records.jsonl")
                if r["eval_split"] == "id_test" and r["metric"] == "acc" and r["epoch"] is None]
    assert recorded == [pytest.approx(acc, abs=1e-9)] and sidecar["recorded_accuracy"]["id_test"] == recorded[0]


def test_clip_wiseft_alpha_export(runs, tmp_path):
    run_dir = runs["wiseft"]
    cfg = _cfg(run_dir)
    x = _batch(32)
    for alpha in (0.5, 0.0):
        file = tmp_path / f"w{alpha}.pt"
        sidecar = export_run(run_dir, file, to="open_clip", alpha=alpha)
        assert sidecar["alpha"] == alpha and sidecar["alpha_in_run_grid"] and sidecar["feature_norm"] is True
        assert sidecar["source"]["theta_0"] == "pretrained backbone + theta0_head.pt"
        package = _package_model(cfg, _wiseft_state(run_dir, alpha))
        want = package(x).detach()
        torch.testing.assert_close(_open_clip_logits(file, sidecar, x), want, **TOL)
        recorded = {r["eval_split"]: r["value"] for r in read_records(run_dir / "records.jsonl")
                    if r["metric"] == "acc" and r["epoch"] is None and r["alpha"] == alpha}
        assert sidecar["recorded_accuracy"] == recorded and len(recorded) == 4
    # alpha = 0 is the zero-shot model: the pretrained tower and the zero-shot head of the benchmark's templates
    from lpft.vision.data import get_benchmark
    from lpft.vision.zeroshot import zeroshot_head

    bb, digits = _pretrained(cfg), get_benchmark("digits")
    w0, _ = zeroshot_head(bb, digits.classnames, digits.templates, progress=False)
    head = torch.load(tmp_path / "w0.0.pt.head.pt", weights_only=True)
    torch.testing.assert_close(head["weight"], w0, rtol=1e-5, atol=1e-5)
    sd = torch.load(tmp_path / "w0.0.pt", weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in bb.clip_model.state_dict().items())
    # the midpoint differs from both endpoints
    mid = torch.load(tmp_path / "w0.5.pt", weights_only=True)
    assert not torch.equal(mid["visual.proj"], sd["visual.proj"])


def test_open_clip_exports_load_without_lpft(runs, tmp_path):
    """The sidecar's printed code, run in an interpreter that imports only torch and open_clip (with the
    exported config directory for the tiny architecture), reproduces the package model's logits."""
    x = _batch(32)
    ft, wise = tmp_path / "ft.pt", tmp_path / "wise.pt"
    export_run(runs["ft"], ft)
    export_run(runs["wiseft"], wise, alpha=0.5)
    cases = [(ft, x, _package_model(_cfg(runs["ft"]), _ckpt_state(runs["ft"]))(x).detach()),
             (wise, x, _package_model(_cfg(runs["wiseft"]), _wiseft_state(runs["wiseft"], 0.5))(x).detach())]
    assert _fresh_check(tmp_path, cases).count("open_clip max abs diff") == 2


def test_lp_export_is_pretrained_tower_with_lp_head(runs, tmp_path):
    run_dir, file = runs["lp"], tmp_path / "lp.pt"
    sidecar = export_run(run_dir, file)  # the backbone's only target is the default
    assert sidecar["target"] == "open_clip" and sidecar["source"]["head"] == "head.pt"
    lp = torch.load(run_dir / "head.pt", weights_only=True)
    head = torch.load(f"{file}.head.pt", weights_only=True)
    assert torch.equal(head["weight"], lp["weight"].float()) and torch.equal(head["bias"], lp["bias"].float())
    pre = _pretrained(_cfg(run_dir)).clip_model.state_dict()
    sd = torch.load(file, weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in pre.items())


def test_clip_wiseft_linear_classifier_export(tmp_path):
    run_dir = _run(tmp_path / "runs", "--backbone", "tiny_clip", "--method", "wiseft", "--wiseft-finetune", "linear",
                   "--alphas", "0,0.5,1")
    file = tmp_path / "lc.pt"
    sidecar = export_run(run_dir, file, alpha=0.5)
    h0 = torch.load(run_dir / "theta0_head.pt", weights_only=True)
    h1 = torch.load(run_dir / "theta1_head.pt", weights_only=True)
    head = torch.load(f"{file}.head.pt", weights_only=True)
    torch.testing.assert_close(head["weight"], 0.5 * h0["weight"] + 0.5 * h1["weight"])
    cfg = _cfg(run_dir)
    bb = _pretrained(cfg)
    sd = torch.load(file, weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in bb.clip_model.state_dict().items())  # only the head moved
    images, labels = _id_test(cfg, bb)
    acc = (_open_clip_logits(file, sidecar, images).argmax(1) == labels).float().mean().item()
    assert sidecar["recorded_accuracy"]["id_test"] == pytest.approx(acc, abs=1e-9)


# --- timm and torchvision formats without a run (fast) ---------------------------------------------------
@pytest.mark.parametrize("name,target", [("efficientnet_lite0", "timm"), ("resnet50", "torchvision")])
def test_format_round_trip(tmp_path, name, target):
    assert valid_targets(name) == (target,)
    torch.manual_seed(0)
    model = Classifier(create_backbone(name, pretrained="none", image_size=32), 7)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a lost buffer shows
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    sd = exportfmt.export_state_dict(model, target)
    torch.save(sd, tmp_path / "m.pt")
    loaded = exportfmt.load_exported(target, tmp_path / "m.pt", backbone=model.backbone, num_classes=7)
    assert set(loaded.state_dict()) == set(sd)
    x = _batch(32, 3)
    torch.testing.assert_close(exportfmt.exported_logits(target, loaded, x), model(x).detach(), **TOL)


# --- errors ---------------------------------------------------------------------------------------------
def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def test_unsupported_target_lists_valid_ones(runs, tmp_path):
    with pytest.raises(ValueError, match=r"'tiny_clip' to 'torchvision'; valid targets: open_clip"):
        export_run(runs["ft"], tmp_path / "x.pt", to="torchvision")
    with pytest.raises(SystemExit):  # argparse: not a target at all
        main([str(runs["ft"]), "--to", "onnx", "--out", str(tmp_path / "x.pt")])
    fake = _copy(runs["ft"], tmp_path)
    cfg = _cfg(fake)
    (fake / "config.json").write_text(json.dumps(dict(cfg, backbone="tiny_cnn")))
    with pytest.raises(ValueError, match="'tiny_cnn' to None; it has no export target"):
        export_run(fake, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="safetensors"):
        export_run(runs["ft"], tmp_path / "x.safetensors")
    assert not any(tmp_path.glob("x.*"))


def test_missing_run_files(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_run(tmp_path / "nope", tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="config.json not found: not a run directory"):
        export_run(tmp_path, tmp_path / "x.pt")
    ft = _copy(runs["ft"], tmp_path)
    (ft / "ckpt" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"best\.pt not found: the checkpoint history.json selected"):
        export_run(ft, tmp_path / "x.pt")
    (ft / "records.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="not complete"):
        export_run(ft, tmp_path / "x.pt")
    w = _copy(runs["wiseft"], tmp_path)
    (w / "theta0_head.pt").unlink()  # a CLIP run rebuilds its zero-shot theta_0 head; the checkpoint is required
    (w / "ckpt" / "last.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"last\.pt not found"):
        export_run(w, tmp_path / "x.pt", alpha=0.5)
    lp = _copy(runs["lp"], tmp_path)
    (lp / "head.pt").unlink()
    with pytest.raises(FileNotFoundError, match="an LP run writes its head there"):
        export_run(lp, tmp_path / "x.pt")
    assert not any(tmp_path.glob("x.*"))


def test_run_state_must_match(runs, tmp_path):
    ft = _copy(runs["ft"], tmp_path)
    cfg = _cfg(ft)
    (ft / "config.json").write_text(json.dumps(dict(cfg, backbone_weights_id="random:seed0:000000000000:quickgelu")))
    with pytest.raises(ValueError, match="the pretrained weights changed"):
        load_run_model(ft)
    (ft / "config.json").write_text(json.dumps(cfg))
    hist = json.loads((ft / "history.json").read_text())
    (ft / "history.json").write_text(json.dumps(dict(hist, best_epoch=2)))
    with pytest.raises(ValueError, match="holds epoch 1, but history.json selected epoch 2"):
        load_run_model(ft)


def test_export_that_does_not_reproduce_the_model_writes_nothing(runs, tmp_path, monkeypatch):
    real = exportfmt.export_state_dict

    def off_by_a_scale(model, target):
        sd = real(model, target)
        sd["visual.proj"] = 2 * sd["visual.proj"]
        return sd

    monkeypatch.setattr(exportfmt, "export_state_dict", off_by_a_scale)
    with pytest.raises(RuntimeError, match="does not reproduce the run's logits"):
        export_run(runs["ft"], tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("alpha", [1.5, -0.1, math.nan])
def test_alpha_outside_unit_interval(runs, tmp_path, alpha):
    with pytest.raises(ValueError, match=r"--alpha must lie in \[0, 1\]"):
        export_run(runs["wiseft"], tmp_path / "x.pt", alpha=alpha)


def test_alpha_required_for_wiseft_and_refused_elsewhere(runs, tmp_path):
    with pytest.raises(ValueError, match=r"WiSE-FT run: pass --alpha.*\[0.0, 0.5, 1.0\]"):
        export_run(runs["wiseft"], tmp_path / "x.pt")
    for method in ("ft", "lp"):
        with pytest.raises(ValueError, match=f"WiSE-FT runs only; .* is a '{method}' run"):
            main([str(runs[method]), "--alpha", "0.5", "--out", str(tmp_path / "x.pt")])
    assert not any(tmp_path.glob("x.*"))


# --- timm and torchvision from real runs (slower: EfficientNet-Lite0 / ResNet-50 on CPU) -----------------
@pytest.mark.slow
def test_efficientnet_wiseft_exports_to_timm_with_interpolated_bn(tmp_path):
    run_dir = _run(tmp_path / "runs", "--backbone", "efficientnet_lite0", "--method", "wiseft", "--image-size", "32",
                   "--batch-size", "16", "--alphas", "0,0.5,1", "--lp-num-cs", "3", "--no-bn-recompute")
    cfg, file = _cfg(run_dir), tmp_path / "lite0.pt"
    sidecar = export_run(run_dir, file, to="timm", alpha=0.5)
    assert sidecar["arch"] == "tf_efficientnet_lite0" and sidecar["bn_stats"] == "interpolated"
    assert "pretrained_cfg_overlay=dict(file=" in sidecar["load"] and "num_classes=10))" in sidecar["load"]
    state = _wiseft_state(run_dir, 0.5)
    sd = torch.load(file, weights_only=True)
    assert torch.equal(sd["classifier.weight"], state["head.weight"])
    assert torch.equal(sd["bn1.running_mean"], state["backbone.net.bn1.running_mean"])  # interpolated statistics
    package = _package_model(cfg, state)
    images, labels = _id_test(cfg, package.backbone)
    want = package(images).detach()
    loaded = exportfmt.load_exported("timm", file, backbone=package.backbone, num_classes=10)
    got = exportfmt.exported_logits("timm", loaded, images)
    torch.testing.assert_close(got, want, **TOL)
    assert sidecar["recorded_accuracy"]["id_test"] == pytest.approx((got.argmax(1) == labels).float().mean().item())
    assert "timm max abs diff" in _fresh_check(tmp_path, [(file, images[:8], want[:8])])


@pytest.mark.slow
def test_resnet50_ft_exports_to_torchvision(tmp_path):
    run_dir = _run(tmp_path / "runs", "--backbone", "resnet50", "--pretrained", "none", "--method", "ft",
                   "--image-size", "32", "--batch-size", "32")
    cfg, file = _cfg(run_dir), tmp_path / "r50.pt"
    sidecar = export_run(run_dir, file, to="torchvision")
    model = exportfmt.load_exported("torchvision", file, backbone=None, num_classes=10)
    package = _package_model(cfg, _ckpt_state(run_dir))
    x = _batch(32)
    want = package(x).detach()
    torch.testing.assert_close(model(x).detach(), want, **TOL)
    assert sidecar["arch"] == "resnet50" and sidecar["bn_stats"] is None
    assert "torchvision max abs diff" in _fresh_check(tmp_path, [(file, x, want)])
    with pytest.raises(ValueError, match="valid targets: torchvision"):
        export_run(run_dir, tmp_path / "x.pt", to="timm")
