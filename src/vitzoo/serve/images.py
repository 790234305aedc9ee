"""From an HTTP request body to the tensor the model takes, refusing anything that is not a usable image.

This runs in the HTTP process, before a request is queued: a bad upload is answered with its 4xx here and never
enters a batch, and decoding runs in parallel with the model (OpenCV and Pillow release the GIL).
"""

from __future__ import annotations

import io
import warnings

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

# raw bodies: these types, or none at all; anything else (JSON, text, a url-encoded form) is a client mistake
RAW_TYPES = ("image/", "application/octet-stream")
ACCEPTED = "multipart/form-data (one file part), image/*, or application/octet-stream"


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a machine-readable `kind`, and a message saying what was wrong."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


async def read_body(request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes: larger ones are refused with 413 once read (or skipped) to the end.

    The rest is read and dropped rather than the connection cut, so the client gets to see the 413; past 4x the
    limit the server stops listening.
    """
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, "body_too_large", f"the body is larger than the limit of {limit} bytes")
    # ASCII digits only ("9¹" is digits to str.isdigit and not to int), and too many of them is too large: int()
    # refuses over 4300 digits
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > 4 * limit):
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > 4 * limit:
                break
    except ClientDisconnect:  # gone before the body was complete: nobody to answer, nothing to log as a fault
        raise RequestError(400, "client_disconnected", "the client went away before sending the whole body") from None
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def _once(data: bytes):
    yield data
    yield b""


async def image_bytes(request, limit: int) -> bytes:
    """The uploaded image's bytes: the one file part of a multipart form, or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    if content_type and not multipart and not content_type.startswith(RAW_TYPES):
        raise RequestError(415, "unsupported_media_type",
                           f"content type {content_type.split(';')[0]!r} is not accepted; send {ACCEPTED}")  # fmt: skip
    body = await read_body(request, limit)
    if not body:
        raise RequestError(400, "empty_body", "the request body is empty; send an image")
    if not multipart:
        return body
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16).parse()
    except MultiPartException as e:
        raise RequestError(400, "bad_multipart", f"malformed multipart body: {e.message}") from None
    files = [v for v in form.values() if isinstance(v, UploadFile)]
    if not files:
        raise RequestError(400, "bad_multipart", "the multipart form has no file part; send the image as field 'file'")
    data = await files[0].read()
    await form.close()
    if not data:
        raise RequestError(400, "empty_body", f"the uploaded file {files[0].filename or ''!r} is empty")
    return data


def check_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header alone (Pillow reads no pixels): refuses what is not an image, and
    images over `max_pixels` (a small file can claim 30000x30000 and decode to gigabytes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit follows
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as e:  # Pillow's own limit, where the server has not lifted it
        raise RequestError(413, "image_too_large", f"image too large: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "unrecognised format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise RequestError(400, "not_an_image", f"not an image ({reason})") from None
    if width * height > max_pixels:
        raise RequestError(413, "image_too_large", f"image too large: {width}x{height} is {width * height / 1e6:.0f} "
                           f"megapixels; the limit is {max_pixels / 1e6:g}")  # fmt: skip
    return width, height


def own_the_pixel_limit() -> None:
    """Leave the limit to `check_size` (--max-megapixels, applied to every upload before decoding), so that Pillow
    neither refuses an image under it nor words the refusal of one over it."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None


def to_tensor(data: bytes, transform, max_pixels: int):
    """The model's input [3, H, W] float32 for this upload, through `transform` (the same one `vitzoo predict` uses)."""
    from ..data.transforms import BadImageError, ImageTooLargeError

    check_size(data, max_pixels)
    try:
        return transform(data)
    except ImageTooLargeError as e:  # vitzoo's own limit (VITZOO_MAX_IMAGE_PIXELS), where it is under --max-megapixels
        raise RequestError(413, "image_too_large", str(e).removeprefix("<bytes>: ")) from None
    except BadImageError as e:
        message = str(e).removeprefix("<bytes>: ")
        kind = "truncated_image" if "truncated" in message else "bad_image"
        raise RequestError(400, kind, f"the image cannot be decoded: {message}") from None
    except Exception as e:  # noqa: BLE001  (OpenCV and Pillow raise assorted errors on odd files)
        raise RequestError(400, "bad_image", f"the image cannot be preprocessed: {e}") from None
