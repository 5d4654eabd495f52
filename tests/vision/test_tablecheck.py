"""lpft.vision.tablecheck: the same-config rule across the seeds of one cell, including soups of per-seed runs."""

from __future__ import annotations

import json

import pytest

from lpft.vision.rundir import RunConfigMismatch
from lpft.vision.tablecheck import check_cell, recipe_digest


def _soup_config(seed: int, epochs: int = 30) -> dict:
    ids = [f"digits-digits_simclr-lpft-lr{lr}-seed{seed}" for lr in ("0.001", "0.003")]
    wid = f"simclr:s2000-p0.2:seed{seed}:key{seed}:digest{seed}"
    return {"method": "soup", "seed": seed, "run_id": f"soup-both-{seed}", "kind": "both", "backbone": "digits_simclr",
            "backbone_weights_id": wid, "filters": {"method": "lpft", "seed": str(seed)}, "ingredients": ids,
            "common": {"epochs": epochs, "seed": seed, "backbone_weights_id": wid},
            "varying": {"lr": {i: float(i.split("-lr")[1].split("-")[0]) for i in ids}}}


def _write(tmp_path, name, cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_soups_of_one_recipe_over_seeds_pool_and_other_recipes_do_not(tmp_path):
    dirs = [_write(tmp_path, f"s{s}", _soup_config(s)) for s in (1, 2, 12)]
    assert check_cell("soup", dirs) == []
    assert len({recipe_digest(_soup_config(s)) for s in (1, 2, 12)}) == 1
    other = _write(tmp_path, "longer", _soup_config(3, epochs=40))  # ingredients fine-tuned for longer
    with pytest.raises(RunConfigMismatch, match="common.epochs"):
        check_cell("soup", [dirs[0], other])
    mixed = _soup_config(4)
    mixed["ingredients"] = mixed["ingredients"][:1] + ["digits-digits_simclr-lpft-lr0.003-seed5"]  # another seed
    with pytest.raises(RunConfigMismatch, match="ingredients"):
        check_cell("soup", [dirs[0], _write(tmp_path, "mixed", mixed)])
