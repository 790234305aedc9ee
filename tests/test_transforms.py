"""eval_transform(..., "seed") is bit-identical to PaddleClas's own operators, on real photographs."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitzoo
from vitzoo.data.transforms import BadImageError

from paddleclas_ops import load_preprocess_module

skimage_data = pytest.importorskip("skimage.data")
SAMPLES = Path(skimage_data.__file__).parent
# real camera images: JPEGs and PNGs, colour and greyscale, landscape and portrait, odd sizes
PHOTOS = ["rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "astronaut.png", "chelsea.png", "coffee.png",
          "camera.png", "motorcycle_left.png"]  # fmt: skip


# PaddleClas's yaml configs (ppcls/configs/ImageNet/{VisionTransformer,DeiT}/*.yaml), written out here (not read from
# vitzoo's spec table: a wrong table must fail this test): resize_short, backend + interpolation, crop, mean, std
HALF, IMAGENET = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PADDLECLAS_CONFIGS = {
    "ViT_base_patch16_224": (256, "cv2", "bilinear", 224, *HALF),
    "ViT_base_patch32_384": (384, "cv2", "bilinear", 384, *HALF),
    "DeiT_small_patch16_224": (256, "pil", "bicubic", 224, *IMAGENET),
    "DeiT_base_distilled_patch16_384": (438, "pil", "bicubic", 384, *IMAGENET),
}


def paddle_pipeline(name):
    """PaddleClas's eval ops for `name`, configured as its yaml configs do (preprocessing.md)."""
    ops = load_preprocess_module()
    resize_short, backend, interpolation, crop, mean, std = PADDLECLAS_CONFIGS[name]
    steps = [
        ops.DecodeImage(to_rgb=True, channel_first=False),
        ops.ResizeImage(resize_short=resize_short, interpolation=interpolation, backend=backend),
        ops.CropImage(size=crop),
        ops.NormalizeImage(scale=1.0 / 255.0, mean=list(mean), std=list(std), order=""),
        ops.ToCHWImage(),
    ]

    def run(data: bytes):
        img = data
        for step in steps:
            img = step(img)
        return img

    return run


@pytest.mark.parametrize("name", list(PADDLECLAS_CONFIGS))
def test_seed_protocol_is_bit_identical_to_paddleclas(name):
    reference = paddle_pipeline(name)
    ours = vitzoo.eval_transform(name, "seed")
    for photo in PHOTOS:
        data = (SAMPLES / photo).read_bytes()
        expected = reference(data)
        got = ours(SAMPLES / photo)
        assert got.dtype == torch.float32 and got.shape == expected.shape, photo
        assert np.array_equal(got.numpy(), expected), f"{photo}: max diff {np.abs(got.numpy() - expected).max()}"
        assert torch.equal(ours(data), got)  # bytes in, same result


def test_sizes_use_python_rounding_and_floor_crop():
    t = vitzoo.eval_transform("DeiT_tiny_patch16_224")
    # 500x375 -> 341.33.. x 256 -> 341; 333x500 -> 256 x 384.38 -> 384; 250.5 rounds half to even
    assert t.resized_size(500, 375) == (341, 256)
    assert t.resized_size(333, 500) == (256, 384)
    assert vitzoo.eval_transform("ViT_base_patch16_384").resized_size(768, 511) == (round(768 * 384 / 511), 384)
    timm_style = vitzoo.eval_transform("DeiT_tiny_patch16_224", "timm")
    assert timm_style.resize_short == math.floor(224 / 0.9)
    assert timm_style.resized_size(500, 375) == (int(248 * 500 / 375), 248)  # torchvision truncates the long side


def test_timm_and_deit_protocols_match_torchvision():
    from torchvision import transforms as T

    for name, protocol, resize, mean in [
        ("ViT_base_patch16_224", "timm", 248, (0.5, 0.5, 0.5)),
        ("DeiT_base_patch16_384", "timm", 384, vitzoo.specs.IMAGENET_MEAN),
        ("DeiT_small_patch16_224", "deit", 256, vitzoo.specs.IMAGENET_MEAN),
        ("DeiT_base_patch16_384", "deit", 438, vitzoo.specs.IMAGENET_MEAN),
    ]:
        t = vitzoo.eval_transform(name, protocol)
        std = (0.5, 0.5, 0.5) if mean == (0.5, 0.5, 0.5) else vitzoo.specs.IMAGENET_STD
        reference = T.Compose([
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(t.crop), T.ToTensor(),
            T.Normalize(mean, std),
        ])  # fmt: skip
        for photo in ["rocket.jpg", "chelsea.png", "camera.png"]:
            with Image.open(SAMPLES / photo) as img:
                expected = reference(img.convert("RGB"))
            got = t(SAMPLES / photo)
            # ToTensor divides by 255 where the seed multiplies by 1/255: a last-bit difference at most
            torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_pil_image_input_and_greyscale():
    t = vitzoo.eval_transform("DeiT_tiny_patch16_224")
    with Image.open(SAMPLES / "camera.png") as img:  # greyscale: expanded to RGB like cv2's IMREAD_COLOR
        from_pil = t(img)
    torch.testing.assert_close(from_pil, t(SAMPLES / "camera.png"))
    std, mean = torch.tensor(t.std)[:, None, None], torch.tensor(t.mean)[:, None, None]
    pixels = from_pil * std + mean  # the three channels carry the same grey values
    torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)


def test_bad_images_are_reported_by_path(tmp_path):
    t = vitzoo.eval_transform("ViT_base_patch16_224")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((SAMPLES / "rocket.jpg").read_bytes()[:5000])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, not_image, empty, tmp_path / "missing.jpg"):
        for protocol in ("seed", "timm"):
            with pytest.raises(BadImageError, match=str(path.name)):
                vitzoo.eval_transform("ViT_base_patch16_224", protocol)(path)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, "JPEG")
    assert t(buf.getvalue()).shape == (3, 224, 224)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'paddle'; choose one of seed, timm, deit"):
        vitzoo.eval_transform("DeiT_tiny_patch16_224", "paddle")


@pytest.mark.parametrize("name, change", [
    ("ViT_base_patch16_224", {"interpolation": "pil_bicubic"}),     # ViT's OpenCV bilinear swapped for Pillow's
    ("DeiT_base_distilled_patch16_384", {"resize_short": 384}),     # DeiT-384's 438 resize dropped
])  # fmt: skip
def test_a_planted_preprocessing_bug_would_fail_the_parity_test(name, change, monkeypatch):
    """The spec table is checked against PaddleClas's settings written out above, not against itself."""
    import dataclasses

    import vitzoo.data.transforms as transforms

    real = transforms.get_spec(name)
    planted = dataclasses.replace(real, eval=dataclasses.replace(real.eval, **change))
    monkeypatch.setattr(transforms, "get_spec", lambda n: planted if n == name else real)
    reference, ours = paddle_pipeline(name), vitzoo.eval_transform(name, "seed")
    data = (SAMPLES / "chelsea.png").read_bytes()
    assert not np.array_equal(ours(data).numpy(), reference(data))
