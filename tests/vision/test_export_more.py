"""``python -m lpft.vision.export`` for model soups, FLYP runs and WiSE-FT of any run (lpft.vision.export_sources):
small real tiny_clip runs on digits, exported to open_clip, loaded back by open_clip and held to the model each
run's own code rebuilds (to 1e-5) and to the accuracies the run recorded; bad variants / alphas are clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.backbones import Classifier  # noqa: E402
from lpft.vision.backbones.tiny import TINY_CLIP_ARCH  # noqa: E402
from lpft.vision.export import export_run, load_run_model, main  # noqa: E402
from lpft.vision.export_sources import check_variant, run_config  # noqa: E402
from lpft.vision.flyp import FlypModel  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main as run_main  # noqa: E402
from lpft.vision.soup import load_soup_model, make_soup  # noqa: E402
from tests.vision.test_export import _cfg, _pretrained  # noqa: E402  (the same rebuild as the base exports)
from tests.vision.test_export import _ckpt_state as _selected  # noqa: E402

SMALL = ["--quiet", "--limit", "16", "--batch-size", "16", "--epochs", "1", "--no-distortion", "--benchmark", "digits",
         "--backbone", "tiny_clip"]
TOL = dict(rtol=1e-5, atol=1e-5)


def _wiseft_from(src: Path, out: Path) -> Path:
    return run_main(["--quiet", "--method", "wiseft", "--wiseft-from", str(src), "--alphas", "0.5,1",
                     "--out", str(out)])


@pytest.fixture(scope="module")
def ft_runs(tmp_path_factory):
    """Two tiny_clip ft runs from one pretrained init (seed 0), two learning rates: soup ingredients."""
    root = tmp_path_factory.mktemp("ft")
    return [run_main([*SMALL, "--method", "ft", "--lr", lr, "--out", str(root / "runs")]) for lr in ("1e-3", "1e-2")]


@pytest.fixture(scope="module")
def soup(ft_runs, tmp_path_factory):
    return make_soup(ft_runs[0].parent, filters=["method=ft"], kind="both", out=tmp_path_factory.mktemp("soups"))


@pytest.fixture(scope="module")
def flyp(tmp_path_factory):
    root = tmp_path_factory.mktemp("flyp")
    src = run_main([*SMALL, "--method", "flyp", "--lr", "1e-3", "--out", str(root / "runs")])
    return src, _wiseft_from(src, root / "wf")


def _flyp_model(cfg: dict, state: dict | None = None) -> FlypModel:
    """FLYP's model as the run builds it (the benchmark's templates), holding ``state`` if given."""
    from lpft.vision.data import get_benchmark

    digits = get_benchmark("digits")
    model = FlypModel.from_backbone(_pretrained(cfg), digits.classnames, digits.templates)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def _mix(theta0: dict, theta1: dict, alpha: float) -> dict:
    """(1 - alpha) theta_0 + alpha theta_1 (Wortsman et al. 2022, Eq. 1), by hand."""
    return {k: (1 - alpha) * v + alpha * theta1[k] if v.is_floating_point() else theta1[k] for k, v in theta0.items()}


def _open_clip(file: Path, sidecar: dict):
    """The exported model loaded by open_clip's own loader, as the sidecar says (logits function, CLIP model)."""
    import open_clip

    open_clip.add_model_config(f"{file}.model_configs")
    model, _, _ = open_clip.create_model_and_transforms(TINY_CLIP_ARCH, pretrained=str(file),
                                                        **sidecar["load_kwargs"])
    model.eval()
    head = torch.load(f"{file}.head.pt", weights_only=True)

    @torch.no_grad()
    def logits(images):
        feats = model.encode_image(images)
        if sidecar["feature_norm"]:
            feats = F.normalize(feats, dim=-1)
        return feats @ head["weight"].T + head["bias"]

    return logits, model


def _images(cfg: dict, backbone, split: str = "id_test"):
    """The run's images and labels of ``split``, through the eval transform the run recorded."""
    from lpft.vision.data import load_split
    from lpft.vision.run import _limit
    from lpft.vision.transforms import build_transforms

    tf = build_transforms(cfg["benchmark"], backbone, protocol=cfg["protocol"], transforms=cfg["transforms"],
                          augment=False, image_size=cfg["image_size"]).eval
    assert repr(tf) == cfg["transforms_resolved"]["eval"]
    ds = _limit(load_split(cfg["benchmark"], cfg["data_root"], split, tf, selection=cfg["selection"]),
                cfg["limit"], seed=0)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _recorded(run_dir: Path, split: str = "id_test", **match) -> float:
    got = [r["value"] for r in read_records(run_dir / "records.jsonl") if r["metric"] == "acc"
           and r["eval_split"] == split and r.get("epoch") is None and all(r.get(k) == v for k, v in match.items())]
    assert len(got) == 1, got
    return got[0]


def _batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# --- model soups ----------------------------------------------------------------------------------------
@pytest.mark.slow  # the soup fixture: two ft runs and a soup (about 30 s on 2 busy cores)
def test_soup_variants_export_to_open_clip(soup, ft_runs, tmp_path, capsys):
    cfg, ing_cfg = _cfg(soup), _cfg(ft_runs[0])
    assert cfg["kind"] == "both" and (soup / "model_uniform.pt").is_file() and (soup / "model_greedy.pt").is_file()
    pre = _pretrained(ing_cfg).clip_model.state_dict()
    images, labels = _images(ing_cfg, _pretrained(ing_cfg))
    x = _batch()
    for variant in ("uniform", "greedy"):
        file = tmp_path / f"{variant}.pt"
        sidecar = main([str(soup), "--variant", variant, "--out", str(file)])
        assert f"(soup, {variant})" in capsys.readouterr().out
        assert sidecar["method"] == "soup" and sidecar["variant"] == variant and sidecar["target"] == "open_clip"
        assert sidecar["ingredients"] == json.loads((soup / "soup.json").read_text())[variant]["ingredients"]
        saved = torch.load(soup / f"model_{variant}.pt", weights_only=True)
        sd = torch.load(file, weights_only=True)
        assert set(sd) == set(pre)
        for k in sd:  # the soup's image tower, the ingredients' (pretrained) text tower
            assert torch.equal(sd[k], saved[f"backbone.{k}"] if k.startswith("visual.") else pre[k]), k
        assert torch.equal(torch.load(f"{file}.head.pt", weights_only=True)["weight"], saved["head.weight"])
        # open_clip's model reproduces the soup module's own loader, and the soup's recorded accuracies
        logits, _ = _open_clip(file, sidecar)
        package = load_soup_model(soup, variant)
        torch.testing.assert_close(logits(x), package(x).detach(), **TOL)
        acc = (logits(images).argmax(1) == labels).float().mean().item()
        assert _recorded(soup, variant=variant) == pytest.approx(acc, abs=1e-9)
        assert sidecar["recorded_accuracy"]["id_test"] == _recorded(soup, variant=variant)
        assert len(sidecar["recorded_accuracy"]) == 4


@pytest.mark.slow  # the soup fixture: two ft runs and a soup (about 30 s on 2 busy cores)
def test_soup_variant_errors(soup, ft_runs, tmp_path):
    with pytest.raises(ValueError, match="holds both the uniform and the greedy soup.*pass --variant uniform or "
                                         "--variant greedy"):
        export_run(soup, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds both"):
        load_run_model(soup)
    with pytest.raises(ValueError, match=r"--variant applies to model-soup runs only; .* is a 'ft' run"):
        export_run(ft_runs[0], tmp_path / "x.pt", variant="greedy")
    copy = Path(shutil.copytree(soup, tmp_path / "soup"))
    (copy / "model_greedy.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model_greedy.pt not found: the soup run writes its greedy soup"):
        export_run(copy, tmp_path / "x.pt", variant="greedy")
    assert not any(tmp_path.glob("x.*"))


def _soup_dir(root: Path, kind: str) -> Path:
    """A soup run directory as lpft.vision.soup lays it out, without weights: the variant is checked before any
    file is read."""
    run_dir = root / f"soup-{kind}"
    run_dir.mkdir()
    common = {"backbone": "tiny_clip", "image_size": 32, "seed": 0, "method": "ft"}
    (run_dir / "config.json").write_text(json.dumps({"method": "soup", "kind": kind, "run_id": run_dir.name, "seed": 0,
                                                     "backbone": "tiny_clip", "benchmark": "digits", "common": common}))
    (run_dir / "records.jsonl").write_text("")
    return run_dir


def test_soup_variant_must_be_one_the_soup_holds(tmp_path):
    both, greedy = _soup_dir(tmp_path, "both"), _soup_dir(tmp_path, "greedy")
    with pytest.raises(ValueError, match=r"soup-both holds both the uniform and the greedy soup \(model_uniform.pt, "
                                         r"model_greedy.pt\): pass --variant uniform or --variant greedy"):
        main([str(both), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ValueError, match=r"soup-greedy holds only the greedy soup \(--kind greedy\), not the uniform "
                                         r"one: pass --variant greedy or leave --variant out"):
        main([str(greedy), "--variant", "uniform", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):  # argparse: not a variant
        main([str(both), "--variant", "mean", "--out", str(tmp_path / "x.pt")])
    cfg = json.loads((greedy / "config.json").read_text())
    assert check_variant(cfg, None) == "greedy" == check_variant(cfg, "greedy")
    assert check_variant(dict(cfg, kind="both"), "uniform") == "uniform"
    with pytest.raises(ValueError, match="--variant must be one of uniform, greedy; got 'both'"):
        check_variant(cfg, "both")
    with pytest.raises(ValueError, match=r"--variant applies to model-soup runs only; r is a 'wiseft' run"):
        check_variant({"method": "wiseft", "run_id": "r"}, "uniform")
    assert check_variant({"method": "ft"}, None) is None
    assert not any(tmp_path.glob("x.*"))


def test_soup_config_reads_the_ingredients_common_settings(tmp_path):
    raw = json.loads((_soup_dir(tmp_path, "uniform") / "config.json").read_text())
    cfg = run_config(raw)
    assert cfg["method"] == "soup" and cfg["image_size"] == 32 and "image_size" not in raw  # soup's own over common
    assert run_config(raw["common"]) is raw["common"]  # any other run's config is read as it is


# --- FLYP ---------------------------------------------------------------------------------------------
def test_flyp_exports_both_fine_tuned_towers_and_its_zero_shot_head(flyp, tmp_path):
    run_dir = flyp[0]
    cfg, file = _cfg(run_dir), tmp_path / "flyp.pt"
    sidecar = export_run(run_dir, file)
    assert sidecar["method"] == "flyp" and sidecar["feature_norm"] is True
    assert any(n.startswith("FLYP: both CLIP towers") for n in sidecar["notes"])
    ck = _selected(run_dir)
    sd = torch.load(file, weights_only=True)
    assert set(sd) == {k[len("clip."):] for k in ck}
    assert all(torch.equal(v, ck[f"clip.{k}"]) for k, v in sd.items())  # both towers and logit_scale, as trained
    pre = _pretrained(cfg).clip_model.state_dict()
    for k in ("token_embedding.weight", "text_projection", "logit_scale", "visual.proj"):
        assert not torch.equal(sd[k], pre[k]), k  # FLYP moved both towers
    package = _flyp_model(cfg, ck)
    with torch.no_grad():
        want_head = package.class_head()
    head = torch.load(f"{file}.head.pt", weights_only=True)
    torch.testing.assert_close(head["weight"], want_head, **TOL)
    assert torch.equal(head["bias"], torch.zeros(10))
    # open_clip's own model: its text tower gives the same zero-shot head, its image tower the FLYP logits
    logits, clip = _open_clip(file, sidecar)
    x = _batch()
    torch.testing.assert_close(logits(x), package(x).detach(), **TOL)
    loaded = FlypModel(clip, _pretrained(cfg).tokenizer, package.classnames, package.templates).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.class_head(), want_head, **TOL)
    images, labels = _images(cfg, _pretrained(cfg))
    acc = (logits(images).argmax(1) == labels).float().mean().item()
    assert _recorded(run_dir, stage=None) == pytest.approx(acc, abs=1e-9) == sidecar["recorded_accuracy"]["id_test"]


# --- WiSE-FT of any run -------------------------------------------------------------------------------
@pytest.mark.slow  # two ft runs, a WiSE-FT run and four exports (about 40 s on 2 busy cores)
def test_wiseft_of_an_ft_run_exports_at_alpha(ft_runs, tmp_path):
    src = ft_runs[0]
    run_dir = _wiseft_from(src, tmp_path / "wf")
    cfg = _cfg(run_dir)
    theta0 = {f"backbone.{k}": v for k, v in _pretrained(cfg).state_dict().items()}
    head0 = torch.load(src / "init_head.pt", weights_only=True)
    theta0.update({"head.weight": head0["weight"], "head.bias": head0["bias"]})
    theta1 = _selected(src)
    images, labels = _images(cfg, _pretrained(cfg))
    x = _batch()
    for alpha in (0.5, 1.0):
        file = tmp_path / f"w{alpha}.pt"
        sidecar = main([str(run_dir), "--alpha", str(alpha), "--out", str(file)])
        assert sidecar["alpha"] == alpha and sidecar["wiseft_source"] == "ft"
        assert sidecar["source"]["source_run"] == str(src.resolve())
        package = Classifier(_pretrained(cfg), 10)
        package.load_state_dict(_mix(theta0, theta1, alpha))
        logits, _ = _open_clip(file, sidecar)
        torch.testing.assert_close(logits(x), package.eval()(x).detach(), **TOL)
        acc = (logits(images).argmax(1) == labels).float().mean().item()
        assert _recorded(run_dir, alpha=alpha) == pytest.approx(acc, abs=1e-9)
        assert sidecar["recorded_accuracy"]["id_test"] == _recorded(run_dir, alpha=alpha)
    # alpha = 1 is the source run's own export
    export_run(src, tmp_path / "src.pt")
    mine, theirs = (torch.load(tmp_path / f, weights_only=True) for f in ("w1.0.pt", "src.pt"))
    assert mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    # errors: alpha required; a source that changed or is gone
    with pytest.raises(ValueError, match=r"is a WiSE-FT run: pass --alpha A in \[0, 1\]"):
        main([str(run_dir), "--out", str(tmp_path / "x.pt")])
    moved = Path(shutil.copytree(run_dir, tmp_path / "moved"))
    (moved / "config.json").write_text(json.dumps(dict(cfg, wiseft_from=str(tmp_path / "gone"),
                                                       wiseft_source=dict(cfg["wiseft_source"], run_dir="/nope"))))
    with pytest.raises(FileNotFoundError, match="source run of .* is gone"):
        export_run(moved, tmp_path / "x.pt", alpha=0.5)
    (moved / "config.json").write_text(json.dumps(dict(cfg, wiseft_source=dict(cfg["wiseft_source"],
                                                                                config_sha256="0" * 64))))
    with pytest.raises(ValueError, match="changed since .* ran"):
        export_run(moved, tmp_path / "x.pt", alpha=0.5)
    assert not any(tmp_path.glob("x.*"))


def test_wiseft_of_a_flyp_run_interpolates_both_towers(flyp, tmp_path):
    src, run_dir = flyp
    cfg = _cfg(run_dir)
    theta0 = _flyp_model(cfg).state_dict()  # the zero-shot CLIP, both towers
    theta1 = _selected(src)
    file = tmp_path / "wf.pt"
    sidecar = export_run(run_dir, file, alpha=0.5)
    assert sidecar["wiseft_source"] == "flyp" and sidecar["feature_norm"] is True
    mixed = _mix(theta0, theta1, 0.5)
    sd = torch.load(file, weights_only=True)
    torch.testing.assert_close(sd["token_embedding.weight"], mixed["clip.token_embedding.weight"], rtol=0, atol=1e-7)
    package = _flyp_model(cfg, mixed)
    logits, _ = _open_clip(file, sidecar)
    x = _batch()
    torch.testing.assert_close(logits(x), package(x).detach(), **TOL)
    images, labels = _images(cfg, _pretrained(cfg))
    acc = (logits(images).argmax(1) == labels).float().mean().item()
    assert _recorded(run_dir, alpha=0.5) == pytest.approx(acc, abs=1e-9) == sidecar["recorded_accuracy"]["id_test"]
    with pytest.raises(ValueError, match="pass --alpha"):
        load_run_model(run_dir)
