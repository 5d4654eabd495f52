"""The benchmark contract: selection sets, declared options, and what ``split_info`` records."""

import pytest

from lpft.vision.data import get_benchmark, list_benchmarks, load_split
from lpft.vision.data.base import SELECTIONS, Benchmark, LabeledDataset
from lpft.vision.data.folders import holdout_split, select_train, train_val_sizes

LPFT_BENCHMARKS = ["living17", "entity30", "domainnet", "cifar10", "fmow", "imagenet"]


class _Rows(LabeledDataset):
    def __init__(self, items, info):
        super().__init__()
        self.items = items
        self.split_info = dict(info)

    def __len__(self):
        return len(self.items)

    def load_item(self, i):
        return self.items[i]


class _Toy(Benchmark):
    """A user benchmark: ten train items, three test items; records what it was asked for."""

    def read_split(self, root, split, transform, *, selection, options):
        train = [(f"tr{i}", i % 2) for i in range(10)]
        if split == "id_test":
            return _Rows([("te0", 0), ("te1", 1), ("te2", 0)], {"asked": split})
        if split in ("id_train", "id_val"):
            rows, info = select_train(train, split, selection, 0.2)
            return _Rows(rows, dict(info, asked=split, colour=options.get("colour")))
        return _Rows([("ood", 1)], {"asked": split})


@pytest.fixture
def toy():
    bench = _Toy(name="toy", classnames=["a", "b"], splits={"id_train": "id", "id_val": "id", "id_test": "id",
                                                              "shifted": "ood"},
                 needs_root=False, paper_selection="the toy test set", options={"colour": ("red", "blue")})
    return bench


def test_selections_and_defaults():
    assert SELECTIONS == ("heldout", "paper")
    for name in LPFT_BENCHMARKS:
        assert get_benchmark(name).paper_selection, name  # every LP-FT benchmark names its selection set
    assert get_benchmark("digits").paper_selection is None
    assert {n: get_benchmark(n).options for n in list_benchmarks() if get_benchmark(n).options} == {
        "fmow": {"fmow_val": ("id", "ood")}}


def test_paper_reads_id_test_as_id_val_and_full_train(toy):
    tr = toy.load(None, "id_train", selection="paper")
    va = toy.load(None, "id_val", selection="paper")
    assert len(tr) == 10 and tr.split_info["train_split"] == "full"
    assert va.items == toy.load(None, "id_test").items and va.split_info["asked"] == "id_test"
    assert va.split_info["same_as"] == "id_test" and va.split_info["selection"] == "paper"
    assert toy.load(None, "shifted", selection="paper").split_info == {"asked": "shifted", "selection": "paper",
                                                                       "colour": "red"}


def test_heldout_is_the_seeded_holdout(toy):
    tr = toy.load(None, "id_train")
    va = toy.load(None, "id_val", options={"colour": "blue"})
    want_tr, want_va = holdout_split(10, 0.2)
    assert [r[0] for r in tr.items] == [f"tr{i}" for i in want_tr]
    assert [r[0] for r in va.items] == [f"tr{i}" for i in want_va]
    assert va.split_info["selection"] == "heldout" and "same_as" not in va.split_info
    # options reach read_split complete (defaults filled) and are recorded
    assert (tr.split_info["colour"], va.split_info["colour"]) == ("red", "blue")


def test_paper_without_a_selection_set_falls_back(toy):
    toy.paper_selection = None
    va = toy.load(None, "id_val", selection="paper")
    assert va.split_info["asked"] == "id_val" and len(va) == 2
    assert va.split_info["selection"] == "heldout" and va.split_info["selection_requested"] == "paper"
    assert "toy" in va.split_info["reason"]


def test_bad_requests_name_the_valid_values(toy):
    with pytest.raises(ValueError, match=r"selection must be one of 'heldout', 'paper'; got 'official'"):
        toy.load(None, "id_val", selection="official")
    with pytest.raises(ValueError, match=r"'toy' has no option 'size'; valid options: colour \(red\|blue\)"):
        toy.load(None, "id_val", options={"size": "big"})
    with pytest.raises(ValueError, match=r"option 'colour' must be one of 'red', 'blue'; got 'green'"):
        toy.load(None, "id_val", options={"colour": "green"})
    with pytest.raises(ValueError, match=r"'cifar10' has no option 'fmow_val'; valid options: none"):
        load_split("cifar10", "/nonexistent-root", "id_test", options={"fmow_val": "id"})
    with pytest.raises(ValueError, match="selection must be one of"):
        load_split("digits", None, "id_val", selection="test")
    with pytest.raises(ValueError, match="non-empty tuple"):
        _Toy(name="bad", classnames=["a"], splits={"id_train": "id", "id_val": "id", "id_test": "id"},
             options={"colour": ()})


def test_train_val_sizes():
    assert train_val_sizes(50_000, 10_000, "paper", 0.1) == (50_000, 10_000)
    assert train_val_sizes(50_000, 10_000, "heldout", 0.1) == (45_000, 5_000)
    with pytest.raises(ValueError, match="selection"):
        train_val_sizes(10, 1, "both", 0.1)
    with pytest.raises(ValueError, match="not 'id_val' under 'paper'"):
        select_train([1, 2, 3], "id_val", "paper", 0.1)
