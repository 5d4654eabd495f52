"""build_transforms: the official LP-FT dataset recipes, checked on fixture images (sizes, content, constants)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pickle  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402

from lpft.vision.backbones import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ToRGB, make_transforms  # noqa: E402
from lpft.vision.transforms import RequireSize, build_transforms, official_recipe_benchmarks  # noqa: E402

OFFICIAL_STD = (0.228, 0.224, 0.225)  # datasets_living17.yaml / datasets_cifar_stl.yaml
BENCHMARKS = ("digits", "living17", "entity30", "domainnet", "cifar10", "fmow", "imagenet")


def stand_in(family: str, size: int = 224, mean=None, std=None, interpolation=InterpolationMode.BILINEAR):
    """A backbone-like object with the attributes build_transforms reads (no network)."""
    if mean is None:
        mean, std = {"clip": (CLIP_MEAN, CLIP_STD), "resnet": (IMAGENET_MEAN, IMAGENET_STD)}.get(
            family, ((0.5,) * 3, (0.5,) * 3))
    train, ev = make_transforms(size, mean=mean, std=std, interpolation=interpolation, resize=size,
                                train_scale=(0.9, 1.0), flip=False, augment=True)
    return SimpleNamespace(name=f"stand_in_{family}", family=family, image_size=size, norm_mean=tuple(mean),
                           norm_std=tuple(std), interpolation=interpolation, train_transform=train, eval_transform=ev)


RESNET, CLIP = stand_in("resnet"), stand_in("clip", interpolation=InterpolationMode.BICUBIC)


def bench(benchmark, backbone=RESNET, **kw):
    kw.setdefault("protocol", "lpft")
    kw.setdefault("transforms", "benchmark")
    return build_transforms(benchmark, backbone, **kw)


def rand_image(w, h, seed=0, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB").convert(mode)


def steps(tf):
    return list(tf.transforms)


def normalize_of(tf):
    (norm,) = [s for s in steps(tf) if isinstance(s, T.Normalize)]
    return tuple(norm.mean), tuple(norm.std)


def unnormalize(x, mean, std):
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def test_cifar_eval_keeps_the_whole_image_and_train_has_no_crop_or_flip():
    arr = np.full((32, 32, 3), 128, dtype=np.uint8)
    arr[0, :], arr[-1, :] = (255, 0, 0), (0, 0, 255)  # top red, bottom blue
    arr[1:-1, 0], arr[1:-1, -1] = (0, 255, 0), (255, 255, 255)  # left green, right white
    img = Image.fromarray(arr)
    spec = bench("cifar10")
    out = spec.eval(img)
    assert out.shape == (3, 224, 224)
    assert normalize_of(spec.eval) == (IMAGENET_MEAN, OFFICIAL_STD)
    px = unnormalize(out, IMAGENET_MEAN, OFFICIAL_STD)
    assert torch.allclose(px[:, 0, 112], torch.tensor([1.0, 0, 0]), atol=0.02)  # the border survives
    assert torch.allclose(px[:, 223, 112], torch.tensor([0, 0, 1.0]), atol=0.02)
    assert torch.allclose(px[:, 112, 0], torch.tensor([0, 1.0, 0]), atol=0.02)
    assert torch.allclose(px[:, 112, 223], torch.tensor([1.0, 1.0, 1.0]), atol=0.02)
    expected = T.Normalize(IMAGENET_MEAN, OFFICIAL_STD)(T.ToTensor()(T.Resize((224, 224))(img)))
    assert torch.equal(out, expected)
    # train: Resize(224) only: deterministic whatever the seed, and the same as eval on a square image
    torch.manual_seed(0)
    a = spec.train(img)
    torch.manual_seed(1)
    b = spec.train(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and torch.equal(a, out)
    assert not any(isinstance(s, (T.RandomResizedCrop, T.RandomCrop, T.RandomHorizontalFlip, T.CenterCrop))
                   for s in steps(spec.train) + steps(spec.eval))
    # STL-10 (96 px) and non-square inputs are squashed whole, not cropped
    assert spec.eval(rand_image(96, 96)).shape == (3, 224, 224)
    assert spec.eval(rand_image(50, 30)).shape == (3, 224, 224)


def test_fmow_is_totensor_and_normalize_of_the_native_image():
    img = rand_image(224, 224, seed=3)
    spec = bench("fmow")
    x = T.ToTensor()(img)
    assert torch.equal(spec.train(img), T.Normalize(IMAGENET_MEAN, (0.2289, 0.224, 0.225))(x))
    assert torch.equal(spec.eval(img), T.Normalize(IMAGENET_MEAN, (0.229, 0.224, 0.225))(x))
    with pytest.raises(ValueError, match="224x224"):
        spec.eval(rand_image(200, 224))
    # a scaled run resizes to the side asked for, and says so
    small = bench("fmow", image_size=32)
    assert small.train(img).shape == (3, 32, 32) and small.eval(rand_image(200, 180)).shape == (3, 32, 32)
    assert "deviation" in small.notes and "deviation" not in spec.notes


def test_domainnet_squashes_to_a_square_and_trains_on_random_crops_of_the_256_square():
    img = rand_image(300, 200, seed=5)  # non-square
    spec = bench("domainnet", CLIP)
    norm = T.Normalize(CLIP_MEAN, CLIP_STD)
    expected = norm(T.ToTensor()(T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC)(img)))
    assert torch.equal(spec.eval(img), expected)
    big = norm(T.ToTensor()(T.Resize((256, 256), interpolation=InterpolationMode.BICUBIC)(img)))
    for seed in range(3):
        torch.manual_seed(seed)
        out = spec.train(img)
        assert out.shape == (3, 224, 224)
        found = any(torch.equal(out, cand[:, i:i + 224, j:j + 224])
                    for cand in (big, big.flip(-1)) for i in range(33) for j in range(33))
        assert found, "the train image must be a 224 crop (possibly flipped) of the 256x256 squash"
    assert any(isinstance(s, T.RandomHorizontalFlip) for s in steps(spec.train))


def test_breeds_resnet_uses_the_configs_std_and_crops():
    for name in ("living17", "entity30"):
        spec = bench(name)
        assert normalize_of(spec.train) == normalize_of(spec.eval) == (IMAGENET_MEAN, OFFICIAL_STD)
        rrc, flip = steps(spec.train)[1:3]
        assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (224, 224) and rrc.scale == (0.08, 1.0)
        assert isinstance(flip, T.RandomHorizontalFlip)
        resize, crop = steps(spec.eval)[1:3]
        assert isinstance(resize, T.Resize) and resize.size == 256 and crop.size == (224, 224)
        assert f"datasets_{name}.yaml" in spec.source
        img = rand_image(320, 256, seed=1)
        expected = T.Normalize(IMAGENET_MEAN, OFFICIAL_STD)(T.ToTensor()(T.CenterCrop(224)(T.Resize(256)(img))))
        assert torch.equal(spec.eval(img), expected)


def test_clip_on_breeds_keeps_the_dataset_crops_with_clip_normalisation():
    spec = bench("living17", CLIP)
    assert normalize_of(spec.train) == normalize_of(spec.eval) == (CLIP_MEAN, CLIP_STD)
    assert isinstance(steps(spec.train)[1], T.RandomResizedCrop) and steps(spec.train)[1].scale == (0.08, 1.0)
    assert isinstance(steps(spec.train)[2], T.RandomHorizontalFlip)
    assert [type(s) for s in steps(spec.eval)[1:3]] == [T.Resize, T.CenterCrop]
    assert "living17_nonorm" in spec.source and "same computation" in spec.notes
    assert "entity30" in bench("entity30", CLIP).source


def test_imagenet_clip_is_the_unaugmented_variant_and_says_so():
    spec = bench("imagenet", CLIP)
    assert repr(spec.train) == repr(spec.eval)
    resize, crop = steps(spec.eval)[1:3]
    assert resize.size == 224 and resize.interpolation == InterpolationMode.BICUBIC and crop.size == (224, 224)
    assert "datasets_imagenet.yaml" in spec.source and "imagenet_augs" in spec.notes
    other = bench("imagenet", RESNET)
    assert isinstance(steps(other.train)[1], T.RandomResizedCrop) and "imagenet_augs" in other.source
    assert normalize_of(other.eval) == (IMAGENET_MEAN, IMAGENET_STD)  # no config constants: the backbone's own


def test_normalisation_per_family():
    tiny = stand_in("tiny", size=32)
    for name in official_recipe_benchmarks():
        assert normalize_of(bench(name, tiny).eval) == ((0.5,) * 3, (0.5,) * 3)
        assert normalize_of(bench(name, CLIP).eval) == (CLIP_MEAN, CLIP_STD)
    assert normalize_of(bench("domainnet", RESNET).eval) == (IMAGENET_MEAN, IMAGENET_STD)  # config has none


def test_image_size_scales_the_geometry():
    spec = bench("living17", stand_in("tiny", size=32))
    assert steps(spec.eval)[1].size == 37 and steps(spec.eval)[2].size == (32, 32)
    assert steps(spec.train)[1].size == (32, 32)
    assert "deviation" in spec.notes and "256 -> 37" in spec.notes
    dn = bench("domainnet", RESNET, image_size=64)
    assert tuple(steps(dn.train)[1].size) == (73, 73) and dn.train(rand_image(90, 60)).shape == (3, 64, 64)
    assert bench("cifar10", RESNET, image_size=32).eval(rand_image(32, 32)).shape == (3, 32, 32)


def test_augment_false_makes_training_deterministic():
    for name in ("living17", "domainnet", "imagenet"):
        spec = bench(name, augment=False)
        assert spec.train is spec.eval and "augment=False" in spec.notes
    cifar = bench("cifar10", augment=False)  # already deterministic: the official train transform stays
    assert repr(cifar.train) == repr(bench("cifar10").train)
    fmow = bench("fmow", augment=False)
    assert normalize_of(fmow.train)[1] == (0.2289, 0.224, 0.225)


def test_backbone_transforms_and_benchmarks_without_a_config():
    spec = build_transforms("imagenet", CLIP, protocol="wiseft", transforms="backbone")
    assert spec.train is CLIP.train_transform and spec.eval is CLIP.eval_transform
    assert "wise-ft" in spec.source
    off = build_transforms("living17", RESNET, protocol="lpft", transforms="backbone", augment=False)
    assert off.train is RESNET.eval_transform
    digits = bench("digits", RESNET)
    assert digits.train is RESNET.train_transform and "no official" in digits.notes
    with pytest.raises(ValueError, match="built for 224"):
        build_transforms("digits", RESNET, protocol=None, transforms="backbone", image_size=64)


@pytest.mark.parametrize("benchmark", BENCHMARKS)
@pytest.mark.parametrize("family", ["resnet", "clip", "tiny"])
def test_every_transform_starts_with_torgb_and_pickles(benchmark, family):
    backbone = stand_in(family, size=32)
    spec = bench(benchmark, backbone, image_size=32)
    # a greyscale image, non-square except for CIFAR training (Resize(S) on the short side: CIFAR is square)
    img = rand_image(40, 40 if benchmark == "cifar10" else 36, mode="L")
    for tf in (spec.train, spec.eval):
        assert isinstance(steps(tf)[0], ToRGB)
        clone = pickle.loads(pickle.dumps(tf))
        torch.manual_seed(0)
        a = tf(img)
        torch.manual_seed(0)
        b = clone(img)
        assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert spec.source


def test_real_backbone_objects_work():
    from lpft.vision.backbones import create_backbone

    tiny = create_backbone("tiny_cnn")
    for name in BENCHMARKS:
        spec = build_transforms(name, tiny, protocol="lpft", transforms="benchmark", image_size=32)
        assert spec.eval(rand_image(224, 224)).shape == (3, 32, 32)


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="'benchmark' or 'backbone'"):
        build_transforms("cifar10", RESNET, protocol="lpft", transforms="official")
    with pytest.raises(ValueError, match="protocol"):
        build_transforms("cifar10", RESNET, protocol="lp-ft", transforms="benchmark")
    with pytest.raises(ValueError, match="image_size"):
        bench("cifar10", image_size=4)
    with pytest.raises(ValueError, match="lacks family"):
        bench("cifar10", SimpleNamespace(norm_mean=(0,) * 3))
    assert repr(RequireSize(224)) == "RequireSize(224)"
