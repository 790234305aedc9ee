"""Known weight names -> local files, downloaded on request into a cache.

Sources `resolve` accepts:
- an existing file or folder: returned as it is;
- "paddleclas", "paddleclas:<Model>" or a model name (any case): PaddleClas's .pdparams of that model;
- "hf" or "hf:<repo_id>": a Hugging Face transformers folder (config.json + model.safetensors);
- "timm" or "timm:<name.tag>": timm's model.safetensors on the Hugging Face hub (repo timm/<name.tag>).

Environment:
- VITZOO_CACHE: the cache folder (default $XDG_CACHE_HOME/vitzoo, that is ~/.cache/vitzoo);
- VITZOO_OFFLINE=1 (or HF_HUB_OFFLINE=1): never touch the network; cached files only;
- VITZOO_PADDLE_ENDPOINT, VITZOO_HF_ENDPOINT (or huggingface_hub's HF_ENDPOINT): where to download from (a mirror).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..specs import SPECS, ModelSpec, UnknownModelError, get_spec
from .common import WeightsError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

log = logging.getLogger("vitzoo")

# Where each kind of weights is downloaded from; an environment variable (first one set wins) replaces the default.
PADDLE_ENDPOINT = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph"
HF_ENDPOINT = "https://huggingface.co"
PADDLE_ENDPOINT_VARS = ("VITZOO_PADDLE_ENDPOINT",)
HF_ENDPOINT_VARS = ("VITZOO_HF_ENDPOINT", "HF_ENDPOINT")
HF_REVISION = "main"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first; older repos have only the .bin

OFFLINE_VARS = ("VITZOO_OFFLINE", "HF_HUB_OFFLINE")
TIMEOUT_S = 60  # per socket operation, not for the whole download
CHUNK = 1 << 20

# Known digests, keyed by the file's path inside the cache (e.g. "paddleclas/ViT_base_patch16_224_pretrained.pdparams").
# PaddleClas publishes none: add one here once a file has been checked, and every later download is verified.
SHA256: dict[str, str] = {}

# Hugging Face repo ids: "name" or "namespace/name"; each part starts with a letter or digit, so never "." or "..".
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

ACCEPTED = (
    "a path to a checkpoint file or Hugging Face folder; 'paddleclas' or a model name such as "
    "'DeiT_tiny_patch16_224' (PaddleClas .pdparams); 'hf' or 'hf:<repo_id>' (Hugging Face transformers); "
    "'timm' or 'timm:<name.tag>' (timm's weights on the Hugging Face hub)"
)


class _NotFound(WeightsError):
    """The server answered 404: the file does not exist there (lets the caller try another file name)."""


def cache_dir() -> Path:
    if os.environ.get("VITZOO_CACHE"):
        return Path(os.environ["VITZOO_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vitzoo"


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n, "").strip()), None)


def offline_var() -> str | None:
    """The variable that turns offline mode on, or None when downloads are allowed."""
    return next((n for n in OFFLINE_VARS if os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on")), None)


def paddle_url(model_name: str) -> str:
    base = (_first_env(PADDLE_ENDPOINT_VARS) or PADDLE_ENDPOINT).rstrip("/")
    return f"{base}/{get_spec(model_name).name}_pretrained.pdparams"


def hf_url(repo_id: str, filename: str) -> str:
    base = (_first_env(HF_ENDPOINT_VARS) or HF_ENDPOINT).rstrip("/")
    return f"{base}/{repo_id}/resolve/{HF_REVISION}/{filename}"


# ---- resolve: a source -> a local path -------------------------------------------------------------------------


def resolve(source, model_name: str | None = None) -> Path:
    """A local file or folder for `source` (see the module doc), downloaded into the cache when needed."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, os.PathLike):
        raise WeightsError(f"{path}: no such file or folder")
    text = str(source).strip()
    kind, colon, arg = text.partition(":")
    kind = kind.lower()
    if kind == "paddleclas":
        return _paddleclas(_spec(arg or model_name, text))
    if not colon and text.lower() in _NAMES:  # another model's file is allowed: e.g. 384 weights for a 224 model
        return _paddleclas(get_spec(text))
    if kind == "hf":
        repo_id = arg or _default(_spec(model_name, text), "hf_id", "Hugging Face checkpoint")
        return _hf_folder(_checked_repo_id(repo_id, text))
    if kind == "timm":
        tag = arg or _default(_spec(model_name, text), "timm_weights", "timm weights")
        return _timm_file(_checked_repo_id(tag, text))
    raise WeightsError(f"weights={text!r}: no such file or folder, and not a known weight name. Accepted: {ACCEPTED}")


_NAMES = {name.lower() for name in SPECS}


def _spec(model_name: str | None, source: str) -> ModelSpec:
    if not model_name:
        raise WeightsError(f"weights={source!r} needs the model's name; or name the weights: {ACCEPTED}")
    try:
        return get_spec(model_name)
    except UnknownModelError as e:
        raise WeightsError(f"weights={source!r}: {e}") from None


def _default(spec: ModelSpec, attribute: str, what: str) -> str:
    value = getattr(spec, attribute)
    if value is None:
        where = [f"'paddleclas' ({paddle_url(spec.name)})"]
        where += [f"'timm' (timm/{spec.timm_weights})"] if spec.timm_weights else []
        where += [f"'hf' ({spec.hf_id})"] if spec.hf_id else []
        raise WeightsError(f"{spec.name} has no published {what}; its weights are available as {', '.join(where)}")
    return value


def _checked_repo_id(repo_id: str, source: str) -> str:
    if not _REPO_ID.fullmatch(repo_id):
        raise WeightsError(f"weights={source!r}: {repo_id!r} is not a valid Hugging Face repo id ('namespace/name')")
    return repo_id


def _cached(url: str, relative: str) -> Path:
    """`url` downloaded to `relative` inside the cache, verified against SHA256 when a digest is known."""
    return download(url, cache_dir() / relative, SHA256.get(relative))


def _paddleclas(spec: ModelSpec) -> Path:
    return _cached(paddle_url(spec.name), f"paddleclas/{spec.name}_pretrained.pdparams")


def _hf_folder(repo_id: str) -> Path:
    relative = f"huggingface/{repo_id.replace('/', '--')}"
    folder = cache_dir() / relative
    _cached(hf_url(repo_id, "config.json"), f"{relative}/config.json")
    if any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        return folder
    safetensors, legacy = HF_WEIGHT_FILES
    try:
        _cached(hf_url(repo_id, safetensors), f"{relative}/{safetensors}")
    except _NotFound:
        try:
            _cached(hf_url(repo_id, legacy), f"{relative}/{legacy}")
        except _NotFound:
            raise WeightsError(f"Hugging Face repo {repo_id} has neither {safetensors} nor {legacy}") from None
    return folder


def _timm_file(tag: str) -> Path:
    repo_id = f"timm/{tag}"
    return _cached(hf_url(repo_id, "model.safetensors"), f"huggingface/{repo_id.replace('/', '--')}/model.safetensors")


# ---- download: a URL -> a cached file, atomically, resumable ---------------------------------------------------


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """`url` saved as `dest` (returned at once if it exists), through `dest.part`, resumed where a previous try stopped.

    The file only appears under its final name once complete (and verified when `sha256` is given); a lock file
    keeps two processes from writing the same .part.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    if variable := offline_var():
        raise WeightsError(
            f"offline mode ({variable}={os.environ[variable]}): {url} is not in the cache; "
            f"download it elsewhere and place it at {dest}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another process finished it while we waited for the lock
            return dest
        log.info("downloading %s to %s", url, dest)
        _fetch(url, part, dest.name, progress)
        if sha256:
            digest = _sha256_of(part)
            if digest != sha256.lower():
                part.unlink()
                raise WeightsError(f"{url}: sha256 mismatch: expected {sha256}, got {digest}; the download was deleted")
        os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, name: str, progress: bool) -> None:
    """Complete `part` from `url`: append to what is there when the server honours a Range request, else restart."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vitzoo"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # nothing left to send: the .part is complete, or longer than the file
            if _range_total(e.headers.get("Content-Range")) == offset:
                return
            part.unlink()
            return _fetch(url, part, name, progress)
        raise _http_error(url, e) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timeout, DNS
        raise WeightsError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    with response:
        resumed = getattr(response, "status", None) == 206
        if resumed and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()  # a range we did not ask for: start again from nothing
            return _fetch(url, part, name, progress)
        if not resumed:
            offset = 0  # the server ignored Range (200): the body is the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        bar = tqdm(
            total=total, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, disable=not progress, leave=False,
        )  # fmt: skip
        with bar, open(part, "ab" if resumed else "wb") as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise WeightsError(
                    f"download of {url} interrupted after {received} bytes ({e}); run again to resume"
                ) from None
    if total is not None and received != total:  # http.client returns b"" when the connection drops early
        raise WeightsError(f"download of {url} interrupted: got {received} of {total} bytes; run again to resume")


def _http_error(url: str, e: urllib.error.HTTPError) -> WeightsError:
    message = f"cannot download {url}: HTTP {e.code} {e.reason}"
    if e.code == 404:
        return _NotFound(message)
    if e.code in (401, 403):
        message += " (the repository may not exist, or be private or gated: download it yourself and pass its path)"
    return WeightsError(message)


def _range_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\*|\d+-\d+)/(\d+)", (content_range or "").strip())
    return int(match.group(2)) if match else None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (left in place afterwards: deleting a lock file races with its users)."""
    with open(lock_path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            f.seek(0)
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)  # gives up after 10 s: try again
                    break
                except OSError:
                    continue
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)
            else:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
