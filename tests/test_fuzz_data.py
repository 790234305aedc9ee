"""Resource bombs are refused before anything is allocated, and every fuzzing finding of the data readers stays fixed.

Memory is measured as the growth of the process's peak resident set over one call (Linux: the peak is reset through
/proc/self/clear_refs), so a decode that allocated and freed its gigabytes still shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

import vitzoo
from vitzoo.data import transforms
from vitzoo.data.datasets import DatasetError, read_list_file
from vitzoo.data.transforms import BadImageError, ImageTooLargeError, decode_cv2, decode_pil

from fuzz_data import TARGETS, black_png, claimed_png, png_chunk
from fuzzing import replay

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions"
FINDINGS = REGRESSIONS / "findings_data.json"
PIPELINES = {  # the three decode/resize paths: OpenCV + OpenCV, OpenCV + Pillow, Pillow + Pillow
    "vit_seed": ("ViT_base_patch16_224", "seed"),
    "deit_seed": ("DeiT_tiny_patch16_224", "seed"),
    "timm": ("DeiT_tiny_patch16_224", "timm"),
}
BOMB_SIDE = 30000  # 900 megapixels: 2.7 GB as RGB; 110 KB as a valid 1-bit PNG


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def peak_growth_mb(call) -> float:
    """How far the process's peak RSS rose above its RSS at the start, over `call()` (which may raise)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    before = _status_kb("VmRSS")
    try:
        call()
    finally:
        growth = (_status_kb("VmHWM") - before) / 1024
    return growth


def refused(call, error=BadImageError) -> tuple[str, float]:
    """(the refusal's message, the peak RSS growth in MB) of a call that must raise `error`."""
    caught: list[BaseException] = []

    def run():
        with pytest.raises(error) as info:
            call()
        caught.append(info.value)

    growth = peak_growth_mb(run)
    return str(caught[0]), growth


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return black_png(BOMB_SIDE, BOMB_SIDE)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_a_decompression_bomb_is_refused_from_its_header(bomb, pipeline, tmp_path):
    assert len(bomb) < 150_000
    transform = vitzoo.eval_transform(*PIPELINES[pipeline])
    message, growth = refused(lambda: transform(bomb), ImageTooLargeError)
    assert message.startswith("<bytes>: ") and "30000x30000" in message and "VITZOO_MAX_IMAGE_PIXELS" in message
    assert growth < 64, f"{growth:.0f} MB while refusing"  # decoding it takes 900 MB at the very least
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match=rf"{re.escape(str(path))}: image too large: 30000x30000"):
        transform(path)


@pytest.mark.parametrize("decode", [decode_cv2, decode_pil], ids=["cv2", "pil"])
def test_both_decoders_refuse_a_claimed_size_whatever_pillows_own_limit(decode, monkeypatch):
    from PIL import Image

    for pillow_limit in (Image.MAX_IMAGE_PIXELS, None):  # Pillow's default refuses first unless ours does; the server
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)  # lifts Pillow's (own_the_pixel_limit)
        message, growth = refused(lambda: decode(claimed_png(BOMB_SIDE, BOMB_SIDE)), ImageTooLargeError)
        assert "<bytes>: image too large: 30000x30000 is 900 megapixels; the limit is 120" in message
        assert growth < 64
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the user's own, lower Pillow limit: still vitzoo's error
    with pytest.raises(BadImageError, match="<bytes>: not a decodable image .*exceeds limit"):
        decode_pil(claimed_png(100, 100))


def test_the_limit_is_a_setting(monkeypatch):
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 60 * 60)
    with pytest.raises(ImageTooLargeError, match="61x60 is 0 megapixels; the limit is 0.0036"):
        decode_pil(claimed_png(61, 60))
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 10**9)  # raised: Pillow's default (179 MP) still applies
    # (its default, whatever an earlier test in this process did: the server's request target owns the limit)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1024 * 1024 * 1024 // 4 // 3))
    with pytest.raises(BadImageError, match="exceeds limit of 178956970 pixels"):
        decode_pil(claimed_png(BOMB_SIDE, BOMB_SIDE))


def test_environment_sets_the_limit_and_opencvs_when_vitzoo_loads_it():
    """VITZOO_MAX_IMAGE_PIXELS sets the limit; OpenCV's own (read once, when cv2 loads) follows it unless the user set
    OPENCV_IO_MAX_IMAGE_PIXELS. A PAM image (OpenCV reads it, Pillow does not) meets OpenCV's limit."""
    script = """if True:
        import os
        from vitzoo.data import transforms
        pam = b"P7\\nWIDTH 2000\\nHEIGHT 2000\\nDEPTH 3\\nMAXVAL 255\\nTUPLTYPE RGB\\nENDHDR\\n" + bytes(300)
        try:
            transforms.decode_cv2(pam)
        except transforms.BadImageError as e:
            print(transforms.MAX_IMAGE_PIXELS, os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"], e)
    """
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    cases = {
        "default": ({}, "120000000 120000000 <bytes>: not a decodable image"),
        "vitzoo's": ({"VITZOO_MAX_IMAGE_PIXELS": "1000000"},
                     "1000000 1000000 <bytes>: not a decodable image (over OpenCV's size limit"),
        "the user's": ({"VITZOO_MAX_IMAGE_PIXELS": "1000000", "OPENCV_IO_MAX_IMAGE_PIXELS": "5000000"},
                       "1000000 5000000 <bytes>: not a decodable image\n"),
    }  # fmt: skip
    procs = {what: subprocess.Popen([sys.executable, "-c", script], env={**env, **extra}, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for what, (extra, _) in cases.items()}  # fmt: skip
    for what, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert out.startswith(cases[what][1]), (what, out, err[-2000:])


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_a_thin_strip_is_refused_before_resizing(pipeline):
    """1x60000 pixels is small, but resized to a 256-pixel short side it is 256x15360000: 11.8 GB. 40x65562 (what
    a 3 KB GIF held) would be 100 megapixels: under the decoding limit, but not a photograph's shape."""
    transform = vitzoo.eval_transform(*PIPELINES[pipeline])
    for w, h in ((1, 60000), (40, 65562), (70000, 40)):
        message, growth = refused(lambda w=w, h=h: transform(black_png(w, h)), ImageTooLargeError)
        assert re.match(rf"<bytes>: a {w}x{h} image resizes to \d+x\d+, \d+ megapixels; enlarging may make at most "
                        "16$", message), message  # fmt: skip
        assert growth < 64
    assert transform(black_png(64, 64 * 60)).shape == (3, 224, 224)  # a 1:60 strip is still a picture
    assert transform(black_png(20000, 300)).shape == (3, 224, 224)  # shrinking: any shape within the pixel limit


def test_a_png_chunk_claiming_gigabytes_is_refused_before_opencv_allocates_them():
    ihdr = png_chunk(b"IHDR", bytes.fromhex("00000028 00000028 0800000000".replace(" ", "")))
    lying = b"\x89PNG\r\n\x1a\n" + ihdr + (3_000_000_000).to_bytes(4, "big") + b"IDAT" + bytes(20)
    message, growth = refused(lambda: decode_cv2(lying))
    assert message == "<bytes>: truncated PNG (its 'IDAT' chunk claims 3000000000 bytes, 16 follow)"
    assert growth < 64  # OpenCV 5.0 alone takes 3 GB for these 63 bytes


def test_a_list_file_with_a_giant_line_is_refused_without_reading_it_whole(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"a.png 0\n" + b"x" * (1 << 20) + b" 1\na.png 2\n")
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=rf"^{re.escape(str(list_file))}:2: line longer than 8192 characters"):
            read_list_file(list_file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 << 10, f"{peak} bytes traced while refusing a 1 MB line"
    list_file.write_bytes(b"a.png 0\n" + b"b" * 8000 + b".png 1\n")  # long, but under the limit: read, and
    with pytest.raises(DatasetError, match=r"list\.txt:2: image .*bbbb\.png: File name too long"):  # refused so
        read_list_file(list_file)


def test_the_server_answers_vitzoos_own_limit_with_413():
    from vitzoo.serve.images import RequestError, to_tensor

    transform = vitzoo.eval_transform("DeiT_tiny_patch16_224")
    with pytest.raises(RequestError) as info:  # over vitzoo's 120 MP, under a --max-megapixels of 200
        to_tensor(claimed_png(11000, 11000), transform, max_pixels=200_000_000)
    assert (info.value.status, info.value.kind) == (413, "image_too_large")
    assert info.value.message.startswith("image too large: 11000x11000 is 121 megapixels")


# -- every finding stays fixed ---------------------------------------------------------------------------------------
def regression_inputs() -> list[Path]:
    return sorted(p for name in TARGETS for p in (REGRESSIONS / name).glob("*") if p.is_file())


@pytest.mark.parametrize("path", regression_inputs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzzing_findings_stay_fixed(path, tmp_path):
    replay(path.parent.name, path.read_bytes(), tmp_path)


def test_every_finding_is_recorded():
    findings = json.loads(FINDINGS.read_text())
    recorded = {(f["target"], f["file"]) for f in findings}
    assert all(f["target"] in TARGETS and f["found"] and f["fix"] for f in findings)
    assert recorded == {(p.parent.name, f"{p.parent.name}/{p.name}") for p in regression_inputs()}


def test_the_folder_target_builds_exactly_the_tree_each_input_describes(tmp_path):
    """Entries are moved in and out of the tree, never removed: an input's result must not depend on the one before."""
    from fuzz_data import FOLDER_SEEDS, _build_folder

    def result(call, root: Path, data: bytes):
        try:
            return sorted((str(p.relative_to(root)), label) for p, label in call(data))
        except DatasetError as e:
            return str(e).replace(str(root), "<root>")

    reused, reused_root = _build_folder(tmp_path / "reused")
    for name, data in FOLDER_SEEDS.items():  # each after all the ones before it, against a fresh build
        fresh, fresh_root = _build_folder(tmp_path / "fresh")
        assert result(reused, Path(reused_root), data) == result(fresh, Path(fresh_root), data), name
    assert result(reused, Path(reused_root), FOLDER_SEEDS["imagenet_like"]) == [
        ("n01440764/n01440764_10026.JPEG", 0), ("n01440764/x.png", 0), ("n01443537/y.jpg", 1)]  # fmt: skip
