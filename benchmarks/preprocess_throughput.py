"""Decode + preprocess images/s on one core: vitzoo's eval transforms against a plain torchvision/PIL pipeline.

Inputs are real photographs (scikit-image's sample images) re-encoded as ImageNet-like JPEGs (short side 375,
quality 90). Writes a JSON record (with the command, machine and date) to --output.

    python benchmarks/preprocess_throughput.py --output benchmarks/preprocess.json
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import torch
from PIL import Image
from torchvision import transforms as T

import vitzoo
from vitzoo.bench.latency import device_name

PHOTOS = ["rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "astronaut.png", "chelsea.png", "coffee.png",
          "motorcycle_left.png", "camera.png"]  # fmt: skip


def imagenet_like_jpegs() -> list[bytes]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    out = []
    for name in PHOTOS:
        with Image.open(folder / name) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = 375 / min(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def torchvision_pipeline(resize: int, crop: int, interpolation, mean, std):
    tf = T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])

    def run(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as img:
            return tf(img.convert("RGB"))

    return run


def rate(fn, images: list[bytes], seconds: float) -> float:
    for data in images:  # warm-up
        fn(data)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in images:
            fn(data)
        count += len(images)
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per pipeline")
    parser.add_argument("--output", help="write the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    images = imagenet_like_jpegs()
    records = []
    for name in ("ViT_base_patch16_224", "DeiT_base_patch16_224", "ViT_base_patch16_384"):
        seed = vitzoo.eval_transform(name, "seed")
        mode = T.InterpolationMode.BILINEAR if seed.interpolation == "cv2_bilinear" else T.InterpolationMode.BICUBIC
        plain = torchvision_pipeline(seed.resize_short, seed.crop, mode, seed.mean, seed.std)
        decode_s = preprocess_s = 0.0
        for data in images:
            _, d, p = seed.timed(data)
            decode_s, preprocess_s = decode_s + d, preprocess_s + p
        record = {
            "model": name,
            "protocol": f"seed ({seed.interpolation}, resize {seed.resize_short}, crop {seed.crop})",
            "vitzoo_images_per_s_per_core": round(rate(seed, images, args.seconds), 1),
            "torchvision_images_per_s_per_core": round(rate(plain, images, args.seconds), 1),
            "vitzoo_decode_share": round(decode_s / (decode_s + preprocess_s), 3),
        }
        record["ratio"] = round(record["vitzoo_images_per_s_per_core"] / record["torchvision_images_per_s_per_core"], 3)
        records.append(record)
        print(json.dumps(record), file=sys.stderr)
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": device_name("cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "date": datetime.date.today().isoformat(),
        "images": f"{len(images)} real photographs (scikit-image samples) as JPEG q90, short side 375",
        "results": records,
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
