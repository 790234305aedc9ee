"""Eval preprocessing: an image -> the normalized CHW float32 tensor a model was evaluated on.

Protocols:
- "seed": PaddleClas's operators, to the bit (`ppcls/data/preprocess/ops/operators.py`): OpenCV decode to RGB, short side
  resized to `round(side * scale)` (Python rounding) with OpenCV INTER_LINEAR (ViT) or Pillow BICUBIC (DeiT), center
  crop at the floor offset, `x * float32(1/255)`, then mean/std in HWC float32.
- "timm": timm's eval transform: Pillow decode, short side to floor(size / crop_pct) (crop_pct 0.9 at 224, 1.0 at
  384), bicubic, torchvision's size and crop rounding.
- "deit": facebookresearch/deit's eval transform: short side to int(256 / 224 * size), bicubic, center crop.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..specs import IMAGENET_MEAN, IMAGENET_STD, get_spec

# every eval preprocessing vitzoo knows; "run" is a trained run's own, kept in its model.json (`vitzoo.factory`)
PROTOCOLS = ("seed", "timm", "deit", "run")
RUN_PROTOCOL = "run"

# The most pixels an image may have, checked from its header before either decoder allocates anything (a 100-byte
# file can claim 30000x30000, and a 110 KB one can really be it). 120 megapixels is above the full-size photographs
# of every camera short of medium format's largest (full frame tops out near 61 MP, the 100 MP medium-format ones pass)
# and below Pillow's own refusal (2 x Image.MAX_IMAGE_PIXELS, ~179 MP), so neither decoder refuses first by its own
# rule; decoded, it is 360 MB as 8-bit RGB, about 0.7-1 GB at the peak of a decode (one copy for the colour
# conversion), which a data-loader worker can afford and a bomb at OpenCV's default 2**30 pixels (3 GB) is not.
# VITZOO_MAX_IMAGE_PIXELS overrides it for the process; the module attribute can be set at run time (as Pillow's is).
DEFAULT_MAX_IMAGE_PIXELS = 120_000_000
MAX_IMAGE_PIXELS = int(os.environ.get("VITZOO_MAX_IMAGE_PIXELS") or DEFAULT_MAX_IMAGE_PIXELS)
# Resizing to the short side shrinks a photograph, but it enlarges a thin strip without bound: a 3 KB GIF of 40x65562
# pixels becomes 256x419597 (1 GB of work for a 224x224 crop). Enlarging may make at most 16 megapixels: a small image
# of any shape a photograph has (a 64:1 panorama at a 256-pixel short side, 36:1 at 438) passes.
MAX_ENLARGED_PIXELS = 16_000_000


class BadImageError(ValueError):
    """An image that cannot be decoded (unreadable, truncated, not an image): names the file."""


class ImageTooLargeError(BadImageError):
    """An image over MAX_IMAGE_PIXELS, refused from its header (or one resizing would blow up): names the file and
    the size it claims."""


# what Pillow raises on a malformed file: OSError (unidentified, truncated), SyntaxError and ValueError from its
# plugins, and DecompressionBombError (not an OSError), its own limit where a user set it below ours
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _source_name(image) -> str:
    """How messages name an image: its path, a file object's name, else its kind ("<bytes>")."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    name = getattr(image, "name", None)
    return name if isinstance(name, str) else f"<{type(image).__name__}>"


def import_cv2():
    """cv2, with OpenCV's own decode limit (OPENCV_IO_MAX_IMAGE_PIXELS, which OpenCV reads once, when it loads) set to
    vitzoo's where the user has not set it. When something imported cv2 before vitzoo, its limit stays as it was
    (2**30 pixels by default): the header check below still covers every format Pillow can read."""
    if "cv2" not in sys.modules:
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    import cv2

    return cv2


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as Pillow's format plugins read it from the header, decoding no pixels; None when none of them
    knows the data (OpenCV may still: its own limit then applies).

    This is `Image.open` without its last step, Pillow's bomb check against Image.MAX_IMAGE_PIXELS: that limit is
    the user's (and the server's) to set, and it refuses without saying the size.
    """
    prefix, tried = data[:16], set()
    for loader in (Image.preinit, Image.init):  # the common formats first, then the rest, as Image.open tries them
        loader()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            try:
                found = accept(prefix) if accept else True  # a str is a warning: "this format, but unsupported"
                if found and not isinstance(found, str):
                    with factory(io.BytesIO(data), "") as img:
                        return img.size
            except (*_PILLOW_ERRORS, IndexError, TypeError, struct.error):  # not this format (Image.open's list)
                continue
    return None


def check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        megapixels, limit = width * height / 1e6, MAX_IMAGE_PIXELS / 1e6
        raise ImageTooLargeError(f"{name}: image too large: {width}x{height} is {megapixels:.0f} megapixels; "
                                 f"the limit is {limit:g} (VITZOO_MAX_IMAGE_PIXELS)")  # fmt: skip


def _check_header(data: bytes, name: str) -> None:
    size = header_size(data)
    if size is not None:
        check_pixels(*size, name)


def _read_bytes(image) -> bytes:
    """The encoded image: bytes as they are, a file object read, a path's file read."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    name = _source_name(image)
    try:
        if hasattr(image, "read"):
            return bytes(image.read())
        if not isinstance(image, (str, os.PathLike)):
            raise BadImageError(f"{name}: not an image (give a path, bytes, a file object or a PIL image)")
        return Path(image).read_bytes()
    except OSError as e:
        raise BadImageError(f"{name}: cannot read: {e.strerror or e}") from None


def _check_complete(data: bytes, name: str) -> None:
    """OpenCV decodes a truncated JPEG with only a warning (grey rows): refuse it as Pillow would."""
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise BadImageError(f"{name}: truncated JPEG (no end-of-image marker)")


def _check_png_chunks(data: bytes, name: str) -> None:
    """OpenCV (5.0) allocates and zeroes each PNG chunk at the length its header claims before reading it: a 63-byte
    file whose IDAT claims 3 GB takes 3 GB. Refuse a chunk longer than the bytes left, as the truncation it is."""
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > end - pos - 12:
            raise BadImageError(f"{name}: truncated PNG (its {kind.decode('latin-1')!r} chunk claims {length} bytes, "
                                f"{max(0, end - pos - 12)} follow)")  # fmt: skip
        if kind == b"IEND":
            return
        pos += 12 + length


def decode_cv2(image, rgb: bool = True) -> np.ndarray:
    """uint8 HWC pixels decoded as PaddleClas does: cv2.imdecode(IMREAD_COLOR), then BGR reversed to RGB.

    `rgb=False` keeps OpenCV's BGR order, saving a copy when the caller can read the channels reversed.
    """
    if isinstance(image, Image.Image):  # already decoded: take its pixels
        pixels = np.asarray(image.convert("RGB"))
        return pixels if rgb else pixels[:, :, ::-1]
    cv2 = import_cv2()
    name = _source_name(image)
    data = _read_bytes(image)
    if not data:
        raise BadImageError(f"{name}: empty file")
    _check_complete(data, name)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png_chunks(data, name)
    _check_header(data, name)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV's own size limit, in a format Pillow does not read; or a decoder's assertion
        reason = "over OpenCV's size limit, OPENCV_IO_MAX_IMAGE_PIXELS" if "IMAGE_PIXELS" in str(e) else e.err
        raise BadImageError(f"{name}: not a decodable image ({reason})") from None
    if bgr is None:
        raise BadImageError(f"{name}: not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if rgb else bgr


def decode_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    name = _source_name(image)
    data = _read_bytes(image)
    _check_header(data, name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")  # convert() forces the full decode, so truncation raises here
    except _PILLOW_ERRORS as e:  # Pillow names its in-memory file by repr: say what it means instead
        reason = "an unrecognised format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise BadImageError(f"{name}: not a decodable image ({reason})") from None


@dataclass(frozen=True)
class EvalTransform:
    """One eval pipeline. Call it on a path, bytes or a PIL image; `timed` also returns decode/preprocess seconds."""

    resize_short: int
    crop: int
    interpolation: str  # "cv2_bilinear" | "pil_bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    decoder: str = "cv2"  # "cv2" (PaddleClas) | "pil" (timm, DeiT)
    rounding: str = "paddle"  # "paddle": round() sizes, floor crop offset | "torchvision": truncate, round offset

    def __call__(self, image) -> torch.Tensor:
        return self.timed(image)[0]

    def timed(self, image) -> tuple[torch.Tensor, float, float]:
        start = time.perf_counter()
        if self.decoder == "cv2":
            # OpenCV resizes each channel alike, so BGR pixels go through as they are and are reordered at the end
            bgr = self.interpolation == "cv2_bilinear"
            pixels = decode_cv2(image, rgb=not bgr)
        else:
            bgr, pixels = False, decode_pil(image)
        decoded = time.perf_counter()
        tensor = self.preprocess(pixels, bgr=bgr, name=_source_name(image))
        return tensor, decoded - start, time.perf_counter() - decoded

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        if self.rounding == "paddle":
            scale = self.resize_short / min(w, h)
            return int(round(w * scale)), int(round(h * scale))
        if w <= h:  # torchvision: the short side exact, the long side truncated
            return self.resize_short, int(self.resize_short * h / w)
        return int(self.resize_short * w / h), self.resize_short

    @cached_property
    def _lut(self) -> np.ndarray:
        """[3, 256] float32: (v * float32(1/255) - mean) / std for every uint8 value v, per RGB channel.

        The same float32 operations as normalizing the image element by element, so the same bits, done once.
        """
        values = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return (values[None, :] - mean) / std

    def preprocess(self, pixels, bgr: bool = False, name: str = "<pixels>") -> torch.Tensor:
        """Decoded pixels (HWC uint8 array, RGB or `bgr`, or a PIL image) -> normalized CHW float32 tensor."""
        if isinstance(pixels, Image.Image):
            w, h = pixels.size
        else:
            h, w = pixels.shape[:2]
        size = self.resized_size(w, h)
        resized, limit = size[0] * size[1], min(max(w * h, MAX_ENLARGED_PIXELS), MAX_IMAGE_PIXELS)
        if resized > limit:  # 40x65562 (a 3 KB GIF) -> 256x419597
            raise ImageTooLargeError(f"{name}: a {w}x{h} image resizes to {size[0]}x{size[1]}, {resized / 1e6:.0f} "
                                     f"megapixels; enlarging may make at most {limit / 1e6:g}")  # fmt: skip
        if self.interpolation == "cv2_bilinear":
            cv2 = import_cv2()
            img = cv2.resize(np.asarray(pixels), size, interpolation=cv2.INTER_LINEAR)
        else:
            if bgr:
                raise ValueError("Pillow resizing needs RGB pixels")
            pil = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
            img = np.asarray(pil.resize(size, Image.BICUBIC))
        img_h, img_w = img.shape[:2]
        if img_h < self.crop or img_w < self.crop:
            raise ValueError(f"resized image {img_w}x{img_h} is smaller than the crop {self.crop}")
        if self.rounding == "paddle":
            top, left = (img_h - self.crop) // 2, (img_w - self.crop) // 2
        else:
            top, left = int(round((img_h - self.crop) / 2.0)), int(round((img_w - self.crop) / 2.0))
        img = img[top : top + self.crop, left : left + self.crop]
        out = np.empty((3, self.crop, self.crop), dtype=np.float32)
        for channel in range(3):  # a table lookup per channel, written straight into CHW
            np.take(self._lut[channel], img[:, :, 2 - channel if bgr else channel], out=out[channel])
        return torch.from_numpy(out)


def center_crop_transform(img_size: int, crop_pct: float, mean, std) -> EvalTransform:
    """timm's and DeiT's eval transform: Pillow decode, short side to int(img_size / crop_pct) (bicubic), center crop
    with torchvision's rounding, normalise. DeiT's own runs use crop_pct 0.875 (256 for 224)."""
    return EvalTransform(int(img_size / crop_pct), img_size, "pil_bicubic", tuple(mean), tuple(std), "pil", "torchvision")


def timm_crop_pct(size: int) -> float:
    """timm's eval crop for these models: the whole image at 384 and above, 0.9 below."""
    return 1.0 if size >= 384 else 0.9


def eval_transform(
    name: str,
    protocol: str = "seed",
    img_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> EvalTransform:
    """The eval preprocessing of model `name` under `protocol` ("seed", "timm" or "deit").

    `mean`/`std` override the normalization: e.g. ViT_small_patch16_224's seed config uses 0.5/0.5 while its weights
    were trained with ImageNet statistics (`mean=IMAGENET_MEAN, std=IMAGENET_STD` evaluates it that way).
    """
    spec = get_spec(name)
    seed = spec.eval
    size = img_size or spec.arch.img_size
    if protocol == "seed":
        resize = seed.resize_short if size == seed.crop else int(round(size * seed.resize_short / seed.crop))
        return EvalTransform(resize, size, seed.interpolation, mean or seed.mean, std or seed.std, "cv2", "paddle")
    if protocol == "timm":
        return center_crop_transform(size, timm_crop_pct(size), mean or seed.mean, std or seed.std)
    if protocol == "deit":  # the DeiT repo normalizes every model with ImageNet statistics
        return center_crop_transform(size, 224 / 256, mean or IMAGENET_MEAN, std or IMAGENET_STD)
    if protocol == RUN_PROTOCOL:
        raise ValueError(f"protocol {RUN_PROTOCOL!r} is a trained run's own preprocessing; {spec.name} has seed, timm "
                         "and deit")  # fmt: skip
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
