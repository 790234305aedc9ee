"""Fuzz targets for the readers of images, list files, image folders and the server's requests.

- image_transform: bytes -> the seed eval transform of a ViT (OpenCV decode and bilinear resize), of a DeiT (OpenCV
  decode, Pillow bicubic resize) and the "timm" protocol (Pillow decode), chosen by len(data) % 3. Errors:
  BadImageError naming "<bytes>". Seeds: scikit-image's photographs, shrunk and re-encoded in every format both
  decoders read (grey, RGBA, palette, 16-bit), and hostile headers claiming 30000x30000 or a 1-pixel-wide strip.
- list_file: bytes as a PaddleClas list file beside two real images. Errors: DatasetError naming the list file.
- image_folder: bytes as a description of an ImageNet-layout folder (see `_build_folder`), scanned by load_samples.
  Errors: DatasetError naming the root.
- serve_request: bytes as headers and a body, through the server's own parsing (image_bytes, then to_tensor). Errors:
  a 4xx RequestError, named as the server names it: by the request id in the JSON answer (see `_build_request`).

Nothing heavy is imported at module level: fuzzing.py imports this module before it instruments vitzoo and Pillow.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

from fuzzing import Target

PIL_PLUGINS = tuple(f"PIL.{name}ImagePlugin" for name in ("Png", "Jpeg", "Gif", "Bmp", "Tiff", "WebP", "Ppm"))
IMAGE_MODELS = (("ViT_small_patch16_224", "seed"), ("DeiT_tiny_patch16_224", "seed"), ("DeiT_tiny_patch16_224", "timm"))
PHOTOS = (  # scikit-image's photographs: (file, longest side, format, options)
    ("astronaut.png", 32, "PNG", {}), ("chelsea.png", 48, "JPEG", {"quality": 70}), ("coffee.png", 32, "BMP", {}),
    ("motorcycle_left.png", 48, "WEBP", {"quality": 60}), ("rocket.jpg", 32, "TIFF", {}),
    ("hubble_deep_field.jpg", 48, "GIF", {}), ("rocket.jpg", 48, "JPEG", {"progressive": True}),
    ("logo.png", 32, "PNG", {"optimize": True}),
)  # fmt: skip


# -- image bytes -----------------------------------------------------------------------------------------------------
def _build_image(workdir: Path):
    from vitzoo.data.transforms import eval_transform

    transforms = [eval_transform(name, protocol) for name, protocol in IMAGE_MODELS]

    def call(data: bytes):
        return transforms[len(data) % 3](data)

    warm_up(call, image_seeds().values())
    return call, "<bytes>"


def warm_up(call, inputs) -> None:
    """Run the seeds once before the harness watches: Pillow imports a format's plugin (and the modules it needs) on
    first use, and an import that defines a dataclass or a namedtuple compiles code from a string, which the audit
    hook would count as the input's doing."""
    import contextlib

    from PIL import Image

    Image.init()
    for data in inputs:
        with contextlib.suppress(Exception):  # the errors are the fuzzing's business, not the warm-up's
            call(data)


def _image_errors():
    from vitzoo.data.transforms import BadImageError

    return (BadImageError,)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def claimed_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a valid IHDR and CRC) over a few bytes of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(200))) + \
        png_chunk(b"IEND", b"")  # fmt: skip


def black_png(width: int, height: int) -> bytes:
    """A valid, complete 1-bit PNG of width x height, all black: about width * height / 8000 bytes, a real bomb."""
    row = bytes(1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    block = max(1, (1 << 22) // len(row))  # rows compressed a few MB at a time
    body = b"".join(z.compress(row * min(block, height - start)) for start in range(0, height, block)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def _photo(name: str, side: int):
    from PIL import Image
    from skimage import data as skimage_data

    with Image.open(Path(skimage_data.__file__).parent / name) as img:
        img = img.convert("RGB") if img.mode not in ("L", "RGB", "RGBA") else img.copy()
    img.thumbnail((side, side))
    return img


def image_seeds() -> dict[str, bytes]:
    """Small real photographs in every format and mode both decoders read, and hostile headers."""
    from PIL import Image

    out: dict[str, bytes] = {}

    def save(name: str, img, fmt: str, **options):
        buffer = io.BytesIO()
        img.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()

    for photo, side, fmt, options in PHOTOS:
        save(f"{photo.split('.')[0]}.{fmt.lower()}", _photo(photo, side), fmt, **options)
    cat, camera = _photo("chelsea.png", 40), _photo("camera.png", 40)
    save("grey.png", camera.convert("L"), "PNG")
    save("grey.jpg", camera.convert("L"), "JPEG")
    save("rgba.png", cat.convert("RGBA"), "PNG")
    save("rgba.webp", cat.convert("RGBA"), "WEBP", lossless=True)
    save("palette.png", cat.convert("P"), "PNG")
    save("palette.bmp", cat.convert("P"), "BMP")
    save("cmyk.jpg", cat.convert("CMYK"), "JPEG")
    save("grey16.png", camera.convert("I;16"), "PNG")
    save("lzw.tiff", cat, "TIFF", compression="tiff_lzw")
    save("bilevel.tiff", camera.convert("1"), "TIFF", compression="group4")
    save("ppm.ppm", cat, "PPM")
    frames = [cat, cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out["animated.gif"] = buffer.getvalue()
    # hostile: truncated; headers claiming far more than the data holds; a strip too thin to resize
    out["truncated.jpg"] = out["chelsea.jpeg"][: len(out["chelsea.jpeg"]) // 2]
    out["claims_30000x30000.png"] = claimed_png(30000, 30000)
    out["claims_11000x11000.png"] = claimed_png(11000, 11000)
    out["strip_1x60000.png"] = black_png(1, 60000)
    jpeg = bytearray(out["grey.jpg"])
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    out["claims_60000x60000.jpg"] = bytes(jpeg)
    gif = bytearray(out["hubble_deep_field.gif"])
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    out["claims_65535x65535.gif"] = bytes(gif)
    bmp = bytearray(out["coffee.bmp"])
    bmp[18:26] = struct.pack("<ii", 40000, -40000)
    out["claims_40000x40000.bmp"] = bytes(bmp)
    return out


def seeds_image(folder: Path) -> None:
    for name, data in image_seeds().items():
        (folder / name).write_bytes(data)


# -- list files ------------------------------------------------------------------------------------------------------
def _list_folder(workdir: Path) -> Path:
    """A folder with a real PNG, a real JPEG (in a subfolder) and the list file, once per process."""
    from PIL import Image

    folder = workdir / "list"
    (folder / "val").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 40)).save(folder / "a.png")
    Image.new("RGB", (8, 8), (20, 130, 240)).save(folder / "val" / "b 1.jpg")
    return folder


def _build_list(workdir: Path):
    from vitzoo.data.datasets import read_list_file

    list_file = _list_folder(workdir) / "list.txt"

    def call(data: bytes):
        list_file.write_bytes(data)
        return read_list_file(list_file)

    return call, str(list_file)


def _dataset_errors():
    from vitzoo.data.datasets import DatasetError

    return (DatasetError,)


LIST_SEEDS = {
    "valid": b"a.png 0\nval/b 1.jpg 1\n",
    "crlf": b"a.png 0\r\nval/b 1.jpg 999\r\n",
    "cr_only": b"a.png 0\rval/b 1.jpg 1\r",
    "blank_lines_and_spaces": b"\n  a.png   3  \n\n\tval/b 1.jpg\t2\n\n",
    "no_final_newline": b"a.png 7",
    "bom": b"\xef\xbb\xbfa.png 0\n",
    "missing_label": b"a.png 0\nval/b 1.jpg\n",
    "negative_label": b"a.png -1\n",
    "word_label": b"a.png one\n",
    "superscript_label": "a.png \u00b2\n".encode(),
    "huge_label": b"a.png " + b"9" * 5000 + b"\n",
    "missing_image": b"nowhere.png 0\n",
    "absolute_and_dotdot": b"../list/a.png 0\n/etc/hostname 1\n",
    "nul_in_path": b"a\x00.png 0\n",
    "long_name": b"x" * 300 + b".png 0\n",
    "latin1": b"caf\xe9.png 0\n",
    "empty": b"",
    "only_blank": b"\n \n\t\n",
    "unicode_separators": "a.png 0\u2028val/b 1.jpg 1\x0ca.png 2\n".encode(),
}


def seeds_list(folder: Path) -> None:
    for name, data in LIST_SEEDS.items():
        (folder / name).write_bytes(data)


# -- image folders ---------------------------------------------------------------------------------------------------
# An input describes a folder tree, one entry a line: a kind letter, then the entry's name.
#   D name   a class folder (up to 3)             F name   a plain file beside the class folders (up to 2)
#   L name   a link to a class folder elsewhere   i name   an image file in the last class folder (up to 3 each)
#   d name   a subfolder in it, holding an image  l name   a link in it to its parent folder (a loop)
#   x name   a dangling link in it
# Other lines, and names that cannot be file names (empty, ".", "..", with "/" or NUL, over 255 bytes, taken), are
# skipped.
#
# Every entry an input can ask for is made once, in build(), and parked outside the scanned root. An input moves the
# ones it names into the tree under those names (os.rename), and the next input moves them back first: the tree is
# exactly what this input describes, nothing is left over from the one before, and the entries stay a few dozen
# however long the run. Removing and remaking trees would be simpler, but the harness rightly counts every os.remove
# and os.rmdir while a target runs as the reader's doing (only build() may clean up); a numbered tree per input, left
# for the next build() to clean, would pile up a million inodes in /dev/shm in a few minutes' run.
FOLDER_KINDS = {"D": 3, "F": 2, "L": 2}  # root level: how many of each
CLASS_KINDS = {"i": 3, "d": 1, "l": 1, "x": 1}  # in each class folder


class FolderTree:
    """The parked entries and where each is now; `arrange(data)` builds the tree an input describes from them."""

    def __init__(self, workdir: Path):
        import shutil

        self.root, self.park_dir, outside = workdir / "tree", workdir / "park", workdir / "outside"
        for folder in (self.root, self.park_dir, outside):  # a previous process's, removed here: outside the watch
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        (outside / "elsewhere.png").write_bytes(b"not really a png")
        self.home: dict[str, Path] = {}  # entry key -> its parked path
        for kind, count in FOLDER_KINDS.items():
            for n in range(count):
                self._make(f"{kind}{n}", kind, outside)
        for c in range(FOLDER_KINDS["D"]):
            for kind, count in CLASS_KINDS.items():
                for n in range(count):
                    self._make(f"D{c}.{kind}{n}", kind, outside)
        self.now: dict[str, Path] = dict(self.home)

    def _make(self, key: str, kind: str, outside: Path) -> None:
        path = self.home[key] = self.park_dir / key
        if kind in ("D", "d"):
            path.mkdir()
            if kind == "d":
                (path / "inner.png").write_bytes(b"\x89PNG")
        elif kind in ("F", "i"):
            path.write_bytes(b"")
        elif kind == "L":
            path.symlink_to(outside, target_is_directory=True)
        elif kind == "l":
            path.symlink_to("..", target_is_directory=True)
        else:  # x
            path.symlink_to("missing.png")

    def park(self) -> None:
        for key in sorted(self.now, key=lambda k: -k.count(".")):  # entries in class folders before the folders
            if self.now[key] != self.home[key]:
                os.rename(self.now[key], self.home[key])
                self.now[key] = self.home[key]

    def arrange(self, data: bytes) -> None:
        self.park()
        used: dict[tuple[str, str], int] = {}  # (class folder key or "", kind) -> entries placed
        names: dict[Path, set[bytes]] = {}
        folder = None  # the last class folder placed: (its key, its path in the tree)
        for line in data.split(b"\n"):
            kind, name = chr(line[0]) if line else "", line[1:].strip(b" ")
            limit = FOLDER_KINDS.get(kind) or CLASS_KINDS.get(kind)
            if not limit or not _usable(name) or (kind in CLASS_KINDS and folder is None):
                continue
            parent_key, parent = ("", self.root) if kind in FOLDER_KINDS else folder
            taken, n = names.setdefault(parent, set()), used.get((parent_key, kind), 0)
            if name in taken or n >= limit:
                continue
            key = f"{parent_key}.{kind}{n}" if parent_key else f"{kind}{n}"
            target = parent / os.fsdecode(name)
            os.rename(self.now[key], target)
            self.now[key], used[parent_key, kind] = target, n + 1
            taken.add(name)
            if kind == "D":
                folder = (key, target)


def _usable(name: bytes) -> bool:
    return 0 < len(name) <= 255 and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def _observe(tree: FolderTree, samples) -> int:
    """Branches on the tree built and what the scan made of it: with `arrange`'s (this module is instrumented), the
    fuzzer's view of the tree's shape, where the scan's own code has a handful of branches."""
    kinds = {key.rpartition(".")[2][0] for key, path in tree.now.items() if path != tree.home[key]}  # "D0.i1" -> "i"
    shape = len(kinds)
    if "L" in kinds:  # a class folder that is a link
        shape += 8
    if "l" in kinds or "x" in kinds:  # links in a class folder: a loop, a dangling one
        shape += 16
    if "d" in kinds:  # a subfolder
        shape += 32
    if samples is None:
        return -shape
    labels = {label for _, label in samples}
    if len(labels) == 1:
        shape += 128
    elif len(labels) == 2:
        shape += 256
    elif len(labels) >= 3:
        shape += 512
    for path, _ in samples:
        if path.suffix != path.suffix.lower():
            shape += 1024
        if len(path.relative_to(tree.root).parts) > 2:
            shape += 2048
        if any(part.startswith(".") for part in path.parts[-2:]):
            shape += 4096
    return shape


def _build_folder(workdir: Path):
    from vitzoo.data.datasets import DatasetError, load_samples

    tree = FolderTree(workdir)

    def call(data: bytes):
        tree.arrange(data)
        try:
            samples = load_samples(tree.root)
        except DatasetError:
            _observe(tree, None)
            raise
        _observe(tree, samples)
        return samples

    return call, str(tree.root)


FOLDER_SEEDS = {
    "imagenet_like": b"Dn01440764\nin01440764_10026.JPEG\nix.png\nDn01443537\niy.jpg\n",
    "suffixes": b"Dcats\nia.PNG\nib.Jpeg\nic.txt\nDdogs\nid.tiff\nie.webp\nif\n",
    "hidden_and_spaces": b"D.hidden\ni.png\nDwith space\nia b.bmp\n",
    "empty_class": b"Dempty\nDfull\nia.png\n",
    "no_classes": b"Fnotes.txt\nFa.png\n",
    "files_only": b"Dcls\nireadme.md\n",
    "folder_named_like_image": b"Dcls\ndalbum.png\n",
    "loop": b"Dcls\nlloop\nia.png\n",
    "dangling": b"Dcls\nxgone.png\n",
    "linked_class": b"Lelsewhere\nDlocal\nia.png\n",
    "unicode": "D\u00f1and\u00fa\ni\u00e9t\u00e9.png\nD\u65e5\u672c\ni\u5199\u771f.jpg\n".encode(),
    "undecodable": b"Dcaf\xe9\nib\xffd.png\n",
    "long_names": b"D" + b"c" * 255 + b"\ni" + b"x" * 251 + b".png\n",
    "duplicates": b"Da\nDa\nix.png\nix.png\n",
    "newline_like": b"Dcls\nia\rb.png\nic\x0bd.png\n",
}


def seeds_folder(folder: Path) -> None:
    for name, data in FOLDER_SEEDS.items():
        (folder / name).write_bytes(data)


# -- server requests -------------------------------------------------------------------------------------------------
# An input is the request's header lines ("Name: value"; a line without a colon is the content type), a blank line,
# then the body, sent in chunks of 2 ** (first header byte % 10) bytes. A header line "x-fuzz: disconnect" makes the
# client hang up after the first chunk.
UPLOAD_LIMIT = 16 << 10  # small, so that the fuzzer reaches the limit and 4x past it
MAX_PIXELS = 50_000_000  # the server's default --max-megapixels
REQUEST_ID = "fuzz-request-0001"


class FakeRequest:
    """What image_bytes reads of a Starlette request: its headers and its body as a stream of chunks."""

    def __init__(self, data: bytes):
        from starlette.datastructures import Headers

        head, _, self.body = data.partition(b"\n\n")
        pairs = []
        for line in head.split(b"\n"):
            name, colon, value = line.partition(b":")
            pairs.append((name.strip().lower(), value.strip()) if colon else (b"content-type", line.strip()))
        self.headers = Headers(raw=[(n, v) for n, v in pairs if n] + [(b"x-request-id", REQUEST_ID.encode())])
        self.chunk = 1 << (head[0] % 10 if head else 6)
        self.disconnect = self.headers.get("x-fuzz") == "disconnect"

    async def stream(self):
        from starlette.requests import ClientDisconnect

        for start in range(0, len(self.body), self.chunk):
            yield self.body[start : start + self.chunk]
            if self.disconnect:
                raise ClientDisconnect()
        yield b""


def _build_request(workdir: Path):
    import asyncio

    from vitzoo.data.transforms import eval_transform
    from vitzoo.serve.app import error_response
    from vitzoo.serve.images import RequestError, image_bytes, own_the_pixel_limit, to_tensor

    own_the_pixel_limit()  # as the server does when it starts: its --max-megapixels check is the only pixel limit
    transforms = [eval_transform(name, protocol) for name, protocol in IMAGE_MODELS[::2]]
    loop = asyncio.new_event_loop()

    def call(data: bytes):
        request = FakeRequest(data)
        try:
            body = loop.run_until_complete(image_bytes(request, UPLOAD_LIMIT))
            return to_tensor(body, transforms[len(data) % 2], MAX_PIXELS)
        except RequestError as e:
            # The server names a refused request by its id, in the JSON answer the app makes of the error: the
            # refusal is passed on as that answer, so the harness's check is that the client is told which request.
            answer = error_response(request.headers.get("x-request-id"), e.status, e.kind, e.message)
            raise RequestError(e.status, e.kind, answer.body.decode()) from e

    warm_up(call, request_seeds().values())
    return call, REQUEST_ID


def _request_errors():
    from vitzoo.serve.images import RequestError

    return (RequestError,)


def _request_error_ok(e) -> bool:
    """A client's mistake (4xx) with a stable machine-readable kind and a message that says what was wrong."""
    import json

    return (
        400 <= e.status < 500 and bool(re.fullmatch(r"[a-z][a-z_]*", e.kind)) and bool(json.loads(e.message)["error"])
    )


def request_seeds() -> dict[str, bytes]:
    images = image_seeds()
    photo, jpeg = images["astronaut.png"], images["grey.jpg"]

    def form(data: bytes, boundary: bytes = b"fuzzboundary", field: bytes = b"file", filename: bytes = b"cat.png"):
        disposition = b'Content-Disposition: form-data; name="' + field + b'"; filename="' + filename + b'"'
        part = b"--" + boundary + b"\r\n" + disposition + b"\r\nContent-Type: image/png\r\n\r\n" + data
        part += b"\r\n--" + boundary + b"--\r\n"
        return b"multipart/form-data; boundary=" + boundary + b"\n\n" + part

    return {
        "raw_png": b"image/png\n\n" + photo,
        "raw_jpeg_octets": b"application/octet-stream\n\n" + jpeg,
        "no_content_type": b"\n\n" + photo,
        "multipart": form(photo),
        "multipart_field_only": (
            b"multipart/form-data; boundary=b\n\n--b\r\nContent-Disposition: form-data; "
            b'name="note"\r\n\r\nhi\r\n--b--\r\n'
        ),
        "multipart_no_boundary": b"multipart/form-data\n\n--x\r\n\r\n",
        "multipart_quoted_utf8_name": form(jpeg, filename='\u00e9t\u00e9 \\" x.jpg'.encode()),
        "multipart_empty_file": form(b""),
        "json": b'application/json\n\n{"image": "aGk="}',
        "text": b"text/plain; charset=utf-8\n\nhello",
        "content_length_lies": b"Content-Type: image/png\nContent-Length: 99999999\n\n" + photo,
        "content_length_junk": b"Content-Type: image/png\nContent-Length: -5e3\n\n" + photo,
        "disconnect": b"image/png\nx-fuzz: disconnect\n\n" + photo,
        "empty": b"image/png\n\n",
        "bomb_header": b"image/png\n\n" + images["claims_30000x30000.png"],
        "strip": b"image/png\n\n" + images["strip_1x60000.png"],
        "truncated": b"image/jpeg\n\n" + images["truncated.jpg"],
        "too_large": b"image/png\n\n" + bytes(UPLOAD_LIMIT + 1),
    }


def seeds_request(folder: Path) -> None:
    for name, data in request_seeds().items():
        (folder / name).write_bytes(data)


DATA = ("vitzoo.data.transforms", "vitzoo.data.datasets")
TARGETS = {
    "image_transform": Target("image_transform", (*DATA, "PIL.Image", "PIL.ImageFile", *PIL_PLUGINS), _build_image,
                              seeds_image, _image_errors,
                              about="image bytes through the seed transforms (OpenCV; OpenCV + Pillow) and timm's"),
    "list_file": Target("list_file", (*DATA, "pathlib"), _build_list, seeds_list, _dataset_errors,
                        about="PaddleClas list files beside two real images"),
    "image_folder": Target("image_folder", (*DATA, "pathlib", "fuzz_data"), _build_folder, seeds_folder,
                           _dataset_errors, about="ImageNet-layout folders: names, suffixes, links, loops"),
    "serve_request": Target("serve_request", ("vitzoo.serve.images", *DATA, "starlette.formparsers",
                                              "python_multipart", "PIL.Image", *PIL_PLUGINS),
                            _build_request, seeds_request, _request_errors, error_ok=_request_error_ok,
                            about="the server's request parsing: headers, raw and multipart bodies, then the image"),
}  # fmt: skip
