"""``python -m lpft.vision.soup``: uniform and greedy soups of small real ft runs (tiny_cnn on digits) that share one
saved pretrained init, held to the hand-computed mean, the greedy rule and the compatibility checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import soup as soup_mod  # noqa: E402
from lpft.vision.backbones.tiny import TinyCNN  # noqa: E402
from lpft.vision.export import load_run_model  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.rundir import RunConfigMismatch  # noqa: E402
from lpft.vision.run import main as run_main  # noqa: E402
from lpft.vision.soup import load_soup_model, main, make_soup  # noqa: E402
from lpft.vision.soup_ingredients import (Ingredient, config_matches, find_ingredients,  # noqa: E402
                                          parse_filters)

SMALL = ["--backbone", "tiny_cnn", "--method", "ft", "--limit", "64", "--epochs", "1", "--quiet", "--no-distortion"]
FT = ["backbone=tiny_cnn", "method=ft"]
SPLITS = ("id_val", "id_test", "typeset", "corrupted")


def _weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(TinyCNN().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three ft seeds from one saved init (``--weights``: same backbone_weights_id) and one from another init."""
    base = tmp_path_factory.mktemp("soup")
    w0, w1 = _weights(base / "w0.pt", 100), _weights(base / "w1.pt", 101)
    seeds = [run_main([*SMALL, "--seed", str(s), "--weights", str(w0), "--out", str(base / "runs")]) for s in (0, 1, 2)]
    other = run_main([*SMALL, "--seed", "0", "--weights", str(w1), "--out", str(base / "other")])
    return {"base": base, "runs": base / "runs", "seeds": seeds, "other": other}


def _state(run_dir: Path) -> dict:
    return load_run_model(run_dir).model.state_dict()


def _ids(dirs) -> list[str]:
    return sorted(json.loads((d / "config.json").read_text())["run_id"] for d in dirs)


def _copy_run(src: Path, dst: Path, run_id: str, edit=None) -> Path:
    """A copy of a run under another run id; ``edit(state)`` changes the selected checkpoint's model in place."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(dict(cfg, run_id=run_id)))
    if edit is not None:
        rel = json.loads((dst / "history.json").read_text())["selected_checkpoint"]
        ck = torch.load(dst / rel, map_location="cpu", weights_only=True)
        edit(ck["model"])
        torch.save(ck, dst / rel)
    return dst


def test_uniform_soup_is_the_mean_of_the_ingredients(runs, tmp_path, capsys):
    out = tmp_path / "soups"
    run_dir = make_soup(runs["runs"], filters=FT + ["lr=1e-2"], kind="uniform", out=out)
    assert run_dir.name.startswith("soup-uniform-digits-tiny_cnn-")
    states = [_state(d) for d in runs["seeds"]]
    soup = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(soup) == set(states[0])
    for k, v in soup.items():
        if v.is_floating_point():  # weights, head and BatchNorm running statistics: the plain mean
            want = torch.stack([s[k] for s in states]).mean(0)
            torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7)
        else:  # num_batches_tracked: the first ingredient's
            assert torch.equal(v, states[0][k])
    assert not torch.equal(soup["head.weight"], states[0]["head.weight"])  # the ingredients really differ
    loaded = load_soup_model(run_dir).state_dict()
    assert all(torch.equal(loaded[k], soup[k]) for k in soup)

    recs = read_records(run_dir / "records.jsonl")
    ids = _ids(runs["seeds"])
    assert {(r["eval_split"], r["metric"]) for r in recs} == {(s, m) for s in SPLITS for m in ("acc", "ece", "nll")}
    assert all(r["method"] == "soup" and r["variant"] == "uniform" and r["ingredients"] == ids for r in recs)
    assert all(r["seed"] == 0 and r["lr"] == 0.01 and r["alpha"] is None for r in recs)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["ingredients"] == ids and cfg["filters"]["lr"] == "1e-2" and cfg["kind"] == "uniform"
    assert cfg["common"]["epochs"] == 1 and set(cfg["varying"]["seed"].values()) == {0, 1, 2}

    # the records are the package evaluation of model.pt: the soup's id_test accuracy, recomputed here
    from lpft.vision.data import load_split
    from lpft.vision.engine import accuracy, predict
    from lpft.vision.run import _limit
    from lpft.vision.transforms import build_transforms

    model = load_soup_model(run_dir)
    tf = build_transforms("digits", model.backbone, protocol="lpft", transforms="benchmark", augment=False).eval
    ds = _limit(load_split("digits", None, "id_test", tf, selection="paper"), 64)
    logits, labels = predict(model, ds, batch_size=64, device=torch.device("cpu"), progress=False)
    acc = next(r["value"] for r in recs if r["eval_split"] == "id_test" and r["metric"] == "acc")
    assert accuracy(logits, labels, ds) == pytest.approx(acc, abs=1e-9)

    # a rerun with the same config is complete; another config into the same directory is refused
    stamp = (run_dir / "records.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert make_soup(runs["runs"], filters=FT + ["lr=1e-2"], kind="uniform", out=out) == run_dir
    assert "complete" in capsys.readouterr().out and (run_dir / "records.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(RunConfigMismatch, match="kind"):
        make_soup(runs["runs"], filters=FT, kind="greedy", out=out, run_id=run_dir.name)


def test_greedy_soup_is_never_worse_than_the_best_ingredient(runs, tmp_path):
    run_dir = main(["--runs", str(runs["runs"]), "--filter", *FT, "--kind", "greedy", "--out", str(tmp_path),
                    "--quiet"])
    info = json.loads((run_dir / "soup.json").read_text())
    val = {i["run_id"]: i["val_acc"] for i in info["ingredients"]}
    steps = info["greedy"]["steps"]
    assert [s["run_id"] for s in steps] == sorted(val, key=lambda r: (-val[r], r))  # best recorded first
    assert steps[0]["kept"] and steps[0]["soup_val_acc"] == pytest.approx(max(val.values()), abs=1e-9)
    kept_accs = [s["soup_val_acc"] for s in steps if s["kept"]]
    assert kept_accs == sorted(kept_accs)  # an ingredient is kept only when id_val accuracy does not drop
    # a dropped ingredient lowered the accuracy of the soup kept so far
    assert all(s["soup_val_acc"] < kept_accs[sum(t["kept"] for t in steps[:i]) - 1]
               for i, s in enumerate(steps) if not s["kept"])
    recs = read_records(run_dir / "records.jsonl")
    kept = [s["run_id"] for s in steps if s["kept"]]
    assert all(r["variant"] == "greedy" and r["ingredients"] == kept for r in recs)
    soup_val = next(r["value"] for r in recs if r["eval_split"] == "id_val" and r["metric"] == "acc")
    assert soup_val >= max(val.values()) and soup_val == pytest.approx(kept_accs[-1], abs=1e-9)


def test_greedy_equals_uniform_when_every_ingredient_helps(runs, tmp_path):
    src = runs["seeds"][0]
    root = tmp_path / "runs"
    _copy_run(src, root / "a", "copy-a")

    def nudge(eps):  # near-identical ingredients: the soup predicts like each of them, so none lowers accuracy
        def edit(state):
            state["head.weight"] += eps
        return edit

    _copy_run(src, root / "b", "copy-b", nudge(1e-6))
    _copy_run(src, root / "c", "copy-c", nudge(-2e-6))
    run_dir = make_soup(root, filters=FT, kind="both", out=tmp_path / "soups")
    uniform = torch.load(run_dir / "model_uniform.pt", weights_only=True)
    greedy = torch.load(run_dir / "model_greedy.pt", weights_only=True)
    assert all(torch.equal(uniform[k], greedy[k]) for k in uniform)
    assert not torch.equal(uniform["head.weight"], _state(src)["head.weight"])
    torch.testing.assert_close(uniform["head.weight"], _state(src)["head.weight"] - 1e-6 / 3, rtol=0, atol=1e-7)
    recs = read_records(run_dir / "records.jsonl")
    assert {r["variant"] for r in recs} == {"uniform", "greedy"}
    assert all(r["ingredients"] == ["copy-a", "copy-b", "copy-c"] for r in recs)
    assert json.loads((run_dir / "soup.json").read_text())["greedy"]["kept"] == ["copy-a", "copy-b", "copy-c"]


def test_greedy_rule_keeps_ties_and_drops_what_hurts(monkeypatch):
    """Recipe 1 on scalar "models" whose id_val accuracy is 1 - |w - 2| / 10."""
    ws = {"a": 1.0, "b": 3.0, "c": 2.0, "d": -10.0}
    ings = [Ingredient(r, Path(r), {}, acc) for r, acc in (("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6))]
    monkeypatch.setattr(soup_mod, "_ingredient_state", lambda ing: {"w": torch.tensor(ws[ing.run_id])})

    class Ev:
        def val_acc(self, state):
            return 1.0 - abs(float(state["w"]) - 2.0) / 10.0

    state, kept, trace = soup_mod._greedy(Ev(), ings, {"w": torch.tensor(1.0)})
    # a: 0.9; a+b: w=2 -> 1.0 kept; a+b+c: w=2 -> 1.0 (a tie) kept; +d: w=-1 -> 0.7 dropped
    assert kept == ["a", "b", "c"] and [t["kept"] for t in trace] == [True, True, True, False]
    assert float(state["w"]) == pytest.approx(2.0)
    ings[3].val_acc = None
    with pytest.raises(ValueError, match="recorded none"):
        soup_mod._greedy(Ev(), ings, {"w": torch.tensor(1.0)})


def test_different_init_or_architecture_is_a_clear_error(runs, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(runs["seeds"][1], mixed / "s1")
    shutil.copytree(runs["other"], mixed / "other")
    with pytest.raises(ValueError, match="pretrained initialisation") as e:
        make_soup(mixed, filters=FT, out=tmp_path / "soups")
    msg = str(e.value)
    assert "backbone_weights_id" in msg and "w0.pt" in msg and "w1.pt" in msg
    assert "lr0.01-seed1)" in msg and "lr0.01-seed0)" in msg

    arch = tmp_path / "arch"
    _copy_run(runs["seeds"][0], arch / "a", "a")
    b = _copy_run(runs["seeds"][1], arch / "b", "b")
    cfg = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps(dict(cfg, backbone="tiny_clip")))
    with pytest.raises(ValueError, match=r"backbone: \"tiny_cnn\" \(a\); \"tiny_clip\" \(b\)"):
        make_soup(arch, out=tmp_path / "soups")
    (b / "config.json").write_text(json.dumps(cfg))

    def wider_head(state):
        state["head.weight"] = torch.zeros(11, 16)
        state["head.bias"] = torch.zeros(11)

    _copy_run(runs["seeds"][2], arch / "c", "c", wider_head)
    with pytest.raises(ValueError, match=r"ingredients a and c have different architectures.*head\.weight"):
        make_soup(arch, out=tmp_path / "soups2")
    assert not list((tmp_path / "soups2").rglob("records.jsonl"))


def test_ingredient_selection_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="at least 2 ingredients; 1 complete"):
        make_soup(runs["runs"], filters=FT + ["seed=1"], out=tmp_path)
    with pytest.raises(ValueError, match="appear in no run's config"):
        make_soup(runs["runs"], filters=["sede=1"], out=tmp_path)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_filters(["method"])
    with pytest.raises(ValueError, match="--kind must be one of"):
        make_soup(runs["runs"], filters=FT, kind="mean", out=tmp_path)
    found = find_ingredients(runs["runs"], parse_filters(["lr=0.0100", "epochs=1"]))
    assert [i.run_id for i in found] == _ids(runs["seeds"]) and all(i.val_acc is not None for i in found)
    cfg = {"lr": 0.001, "seed": 0, "freeze_bn": False, "weights": None, "alphas": [0.0, 0.5],
           "split_info": {"id_val": {"size": 64}}}
    assert config_matches(cfg, {"lr": "1e-3", "seed": "0", "freeze_bn": "false", "weights": "none",
                                "split_info.id_val.size": "64"})
    assert not config_matches(cfg, {"lr": "0.01"}) and not config_matches(cfg, {"seed": "zero"})
    assert not config_matches(cfg, {"missing": "1"})


def test_table_reads_a_soup_run(runs, tmp_path):
    from lpft.vision.table import build_table

    root = tmp_path / "runs"
    shutil.copytree(runs["runs"], root, ignore=shutil.ignore_patterns(".cache"))
    make_soup(root, filters=FT, kind="uniform", out=root)  # the soup beside its ingredients
    rows = build_table(root)
    assert {r.method for r in rows} == {"ft", "soup"}
    soup_row = next(r for r in rows if r.method == "soup")
    recs = read_records(next(root.glob("soup-*/records.jsonl")))
    want = next(r["value"] for r in recs if r["eval_split"] == "id_test" and r["metric"] == "acc")
    assert soup_row.cells["id_test"].agg.mean == pytest.approx(want)


def test_recompute_bn_re_estimates_the_averaged_statistics(runs, tmp_path):
    from lpft.vision.data import load_split
    from lpft.vision.interpolate import recompute_batchnorm
    from lpft.vision.run import _limit
    from lpft.vision.transforms import build_transforms

    run_dir = make_soup(runs["runs"], filters=FT, kind="uniform", out=tmp_path, recompute_bn=True)
    assert run_dir.name.endswith("-bnrecomputed")
    recs = read_records(run_dir / "records.jsonl")
    assert recs and all(r["bn_stats"] == "recomputed" for r in recs)
    got = torch.load(run_dir / "model.pt", weights_only=True)
    states = [_state(d) for d in runs["seeds"]]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[0].items()}
    model = load_run_model(runs["seeds"][0]).model
    model.load_state_dict(mean)
    tf = build_transforms("digits", model.backbone, protocol="lpft", transforms="benchmark", augment=False).eval
    train = _limit(load_split("digits", None, "id_train", tf, selection="paper"), 64)
    recompute_batchnorm(model, train, batch_size=128, device=torch.device("cpu"), seed=0)
    want = model.state_dict()
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6)
        if "running_" in k:  # the statistics are re-estimated, not the averaged ones
            assert not torch.allclose(v, mean[k])
        elif v.is_floating_point():
            torch.testing.assert_close(v, mean[k], rtol=1e-6, atol=1e-7)
