"""`vitzoo serve`, tested as it runs: the real server started as a process on 127.0.0.1 (a free port), spoken to
over HTTP. A tiny DeiT with lively random weights keeps it fast; the photographs come from scikit-image."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
skimage_data = pytest.importorskip("skimage.data")

from vitzoo.cli.main import main as vitzoo_main  # noqa: E402

PHOTOS = Path(skimage_data.__file__).parent
NAME = "DeiT_tiny_patch16_224"
MAX_UPLOAD_MB = 2


# -- a server process -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m vitzoo serve ARGS --port P` on 127.0.0.1, its output in `log`; `stop()` ends it and its children."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vitzoo", "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
        # trust_env=False: no proxy from the environment; this client only ever talks to 127.0.0.1
        self.client = httpx.Client(base_url=self.url, timeout=60, trust_env=False)

    def wait_ready(self, timeout: float = 120) -> list[tuple[int, int]]:
        """Polls /healthz and /readyz until ready: the (healthz, readyz) codes seen once HTTP answered."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                codes = (self.client.get("/healthz").status_code, self.client.get("/readyz").status_code)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.append(codes)
            if codes[1] == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of its session still alive (workers, LitServe's manager): the server's own children
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """DeiT-tiny with lively random weights (O(1) logits: distinct probabilities, a stable top-5)."""
    import vitzoo
    from safetensors.torch import save_file
    from vitzoo.infer import lively_init_

    path = tmp_path_factory.mktemp("serve_weights") / "deit_tiny.safetensors"
    save_file(lively_init_(vitzoo.create_model(NAME)).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    srv = ServerProcess(["--model", NAME, "--weights", str(weights), "--max-batch-size", "16",
                         "--batch-timeout-ms", "10", "--max-upload-mb", str(MAX_UPLOAD_MB)],
                        log, env={"VITZOO_SERVE_FAULTS": "1"})  # fmt: skip
    try:
        srv.startup = srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def classify(srv, data: bytes, content_type="image/png", headers=None, **params):
    return srv.client.post("/v1/classify", params=params, content=data,
                           headers={"Content-Type": content_type, **(headers or {})})  # fmt: skip


def vitzoo_predict(capsys, args: list[str]) -> list[dict]:
    capsys.readouterr()
    assert vitzoo_main(["predict", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_top(served: list[dict], expected: list[dict], tol: float = 1e-5) -> None:
    assert [t["index"] for t in served] == [t["index"] for t in expected]
    assert [t["label"] for t in served] == [t["label"] for t in expected]
    for s, e in zip(served, expected):
        assert abs(s["probability"] - e["probability"]) <= tol, (s, e)


def metric(text: str, name: str) -> float:
    """The value of one sample line `name value` (labels included in `name`)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- startup ------------------------------------------------------------------------------------------------------------
def test_alive_before_ready_and_ready_once_warm(server):
    first_healthz, first_readyz = server.startup[0]
    assert first_healthz == 200 and first_readyz == 503, server.startup  # HTTP up while the model still loads
    assert server.startup[-1] == (200, 200)
    body = server.client.get("/readyz").json()
    assert body == {"ready": True, "model": "ready", "draining": False}
    assert metric(server.client.get("/metrics").text, "vitzoo_serve_ready") == 1.0
    assert "model worker ready" in server.log.read_text()


# -- the numbers `vitzoo predict` gives ----------------------------------------------------------------------------------
@pytest.mark.parametrize("photo,protocol", [("astronaut.png", None), ("rocket.jpg", None), ("chelsea.png", "timm")])
def test_classify_gives_what_vitzoo_predict_gives(server, weights, capsys, photo, protocol):
    path = PHOTOS / photo
    flags = ["--protocol", protocol] if protocol else []
    expected = vitzoo_predict(capsys, ["--model", NAME, "--weights", str(weights), str(path), *flags])[0]["top"]
    params = {"top_k": 5, **({"protocol": protocol} if protocol else {})}
    raw = classify(server, path.read_bytes(), "image/jpeg" if photo.endswith("jpg") else "image/png", **params)
    assert raw.status_code == 200, raw.text
    answer = raw.json()
    assert answer["model"] == NAME and answer["protocol"] == (protocol or "seed") and len(answer["top"]) == 5
    assert_same_top(answer["top"], expected)
    assert set(answer["time_ms"]) == {"preprocess", "queue", "model", "total"} and answer["time_ms"]["total"] > 0
    assert raw.headers["x-request-id"] == answer["request_id"]
    # the same file as a multipart upload (what browsers and `curl -F` send)
    form = server.client.post("/v1/classify", params=params, files={"file": (photo, path.read_bytes())})
    assert form.status_code == 200, form.text
    assert_same_top(form.json()["top"], expected)


def test_top_k_and_names(server):
    answer = classify(server, (PHOTOS / "coffee.png").read_bytes(), top_k=12).json()
    assert len(answer["top"]) == 12
    probabilities = [t["probability"] for t in answer["top"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(t["wnid"].startswith("n") and t["label"] for t in answer["top"])  # ImageNet's names for 1000 classes


# -- dynamic batching ---------------------------------------------------------------------------------------------------
def test_32_concurrent_requests_are_batched_and_each_answered_as_alone(server):
    photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    data = {p: (PHOTOS / p).read_bytes() for p in photos}
    alone = {p: classify(server, data[p]).json()["top"] for p in photos}  # one at a time: batches of 1
    before = server.client.get("/metrics").text
    batched_before = metric(before, "vitzoo_serve_batch_size_count") - metric(before, 'vitzoo_serve_batch_size_bucket{le="1.0"}')

    jobs = [photos[i % len(photos)] for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda p: classify(server, data[p]), jobs))
    assert [a.status_code for a in answers] == [200] * 32
    for photo, answer in zip(jobs, answers):
        assert_same_top(answer.json()["top"], alone[photo])
    sizes = [a.json()["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes

    after = server.client.get("/metrics").text
    batched = metric(after, "vitzoo_serve_batch_size_count") - metric(after, 'vitzoo_serve_batch_size_bucket{le="1.0"}')
    assert batched > batched_before  # batches larger than 1, as /metrics counts them
    assert metric(after, 'vitzoo_serve_requests_total{code="200",route="/v1/classify"}') >= 36
    for name in ("vitzoo_serve_queue_seconds_count", "vitzoo_serve_model_seconds_count",
                 "vitzoo_serve_preprocess_seconds_count"):  # fmt: skip
        assert metric(after, name) > 0


# -- bad input: a 4xx that says what was wrong, and the server serves on ------------------------------------------------
def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny valid PNG whose header claims width x height (the IHDR patched, its CRC recomputed)."""
    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    png = bytearray(out.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_bad_inputs_get_a_4xx_that_says_what_was_wrong(server):
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    cases = {
        "not an image": (lambda: classify(server, b"this is plain text, not pixels" * 10), 400, "not_an_image"),
        "truncated jpeg": (lambda: classify(server, photo[: len(photo) // 2], "image/jpeg"), 400, "truncated_image"),
        "empty body": (lambda: classify(server, b""), 400, "empty_body"),
        "decompression bomb": (lambda: classify(server, bomb_png()), 413, "image_too_large"),
        "moderate bomb": (lambda: classify(server, bomb_png(10000, 8000)), 413, "image_too_large"),
        "over the size limit": (lambda: classify(server, os.urandom((MAX_UPLOAD_MB << 20) + 4096)), 413, "body_too_large"),
        "wrong content type": (lambda: classify(server, photo, "application/json"), 415, "unsupported_media_type"),
        "text content type": (lambda: classify(server, photo, "text/plain"), 415, "unsupported_media_type"),
        "top_k 0": (lambda: classify(server, photo, top_k=0), 422, "bad_parameter"),
        "top_k 5000": (lambda: classify(server, photo, top_k=5000), 422, "bad_parameter"),
        "top_k not a number": (lambda: classify(server, photo, top_k="five"), 422, "bad_parameter"),
        "unknown protocol": (lambda: classify(server, photo, protocol="fancy"), 422, "bad_parameter"),
        "run protocol of a table model": (lambda: classify(server, photo, protocol="run"), 422, "bad_parameter"),
        "a url-encoded form": (lambda: server.client.post("/v1/classify", data={"top_k": "5"},
                                                                files={}), 415, "unsupported_media_type"),
        "multipart, field only": (lambda: server.client.post("/v1/classify", files={"note": (None, "hi")}),
                                  400, "bad_multipart"),
        "attention of nothing": (lambda: server.client.post("/v1/attention", content=b"",
                                                            headers={"Content-Type": "image/png"}), 400, "empty_body"),
    }  # fmt: skip
    for what, (send, status, kind) in cases.items():
        response = send()
        assert response.status_code == status, (what, response.status_code, response.text)
        body = response.json()
        assert body["kind"] == kind and body["error"] and body["request_id"], (what, body)
    assert "30000x30000" in classify(server, bomb_png()).json()["error"]
    assert "limit" in classify(server, os.urandom((MAX_UPLOAD_MB << 20) + 1)).json()["error"]
    assert "top_k" in classify(server, photo, top_k=5000).json()["error"]
    # and everyone else is still served
    assert server.client.get("/healthz").status_code == 200 and server.client.get("/readyz").status_code == 200
    assert classify(server, photo, "image/jpeg").status_code == 200
    errors = server.client.get("/metrics").text
    assert metric(errors, 'vitzoo_serve_errors_total{kind="image_too_large"}') >= 3
    assert server.client.get("/nowhere").json()["kind"] == "not_found"


def test_a_client_that_hangs_up_mid_batch_breaks_nothing(server):
    photo = (PHOTOS / "chelsea.png").read_bytes()
    expected = classify(server, photo).json()["top"]

    def hang_up():  # the whole request sent, then gone before the answer
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(photo)}\r\n\r\n").encode()  # fmt: skip
            s.sendall(head + photo)
        return None

    with ThreadPoolExecutor(16) as pool:
        jobs = [pool.submit(hang_up if i % 2 else classify, *([] if i % 2 else [server, photo])) for i in range(16)]
        answers = [j.result() for j in jobs if j.result() is not None]
    assert len(answers) == 8 and all(a.status_code == 200 for a in answers)
    for answer in answers:
        assert_same_top(answer.json()["top"], expected)
    assert classify(server, photo).status_code == 200 and server.client.get("/readyz").status_code == 200


# -- attention ----------------------------------------------------------------------------------------------------------
def test_attention_as_png_overlay_and_as_numbers(server):
    from PIL import Image

    photo = (PHOTOS / "astronaut.png").read_bytes()
    png = server.client.post("/v1/attention", content=photo, headers={"Content-Type": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    overlay = Image.open(BytesIO(png.content))
    assert overlay.size == (224, 224) and overlay.mode == "RGB"
    plain = server.client.post("/v1/attention", params={"alpha": 0}, content=photo, headers={"Content-Type": "image/png"})
    cls = server.client.post("/v1/attention", params={"method": "cls"}, files={"file": ("a.png", photo)})
    assert plain.content != png.content and cls.content != png.content

    numbers = server.client.post("/v1/attention", params={"format": "json"}, files={"file": ("a.png", photo)}).json()
    assert numbers["grid"] == [14, 14] and numbers["prefix_tokens"] == 1 and numbers["model"] == NAME
    for key in ("cls", "rollout"):
        grid = numbers[key]
        assert len(grid) == 14 and all(len(row) == 14 for row in grid)
        values = [v for row in grid for v in row]
        assert min(values) >= 0 and 0 < sum(values) <= 1 + 1e-5  # a share of the class token's attention
    bad = server.client.post("/v1/attention", params={"alpha": 2}, files={"file": ("a.png", photo)})
    assert bad.status_code == 422 and bad.json()["kind"] == "bad_parameter"


def test_attention_grids_follow_the_model(tmp_path):
    """The maps themselves, in process: two prefix tokens for a distilled DeiT; rollout is a product of
    row-stochastic matrices, so the class token's row sums to 1 over all tokens."""
    import torch
    import vitzoo
    from vitzoo.infer import lively_init_
    from vitzoo.serve.attention import attention_grids, overlay_png

    model = lively_init_(vitzoo.create_model("DeiT_tiny_distilled_patch16_224", img_size=64)).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    grids = attention_grids(model, images)
    assert len(grids) == 3
    maps = model.get_attention_maps(images[:1])
    cls = maps[-1].mean(1)[0, 0, 2:].reshape(4, 4)
    assert torch.allclose(torch.tensor(grids[0]["cls"]), cls, atol=1e-6)
    eye = torch.eye(18)
    rollout = eye
    for attn in maps:
        a = 0.5 * attn.mean(1)[0] + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    assert abs(rollout[0].sum().item() - 1) < 1e-5
    assert torch.allclose(torch.tensor(grids[0]["rollout"]), rollout[0, 2:].reshape(4, 4), atol=1e-6)
    single = attention_grids(model, images[1:2])[0]  # batched == alone
    assert torch.allclose(torch.tensor(single["rollout"]), torch.tensor(grids[1]["rollout"]), atol=1e-6)
    png = overlay_png(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy(), grids[0]["rollout"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# -- the other routes ---------------------------------------------------------------------------------------------------
def test_models_openapi_metrics_and_page(server):
    card = server.client.get("/v1/models").json()["models"][0]
    assert card["name"] == NAME and card["num_classes"] == 1000 and card["img_size"] == 224
    assert card["protocol"] == "seed" and card["protocols"] == ["seed", "timm", "deit"] and card["ready"] is True
    assert (card["precision"], card["backend"], card["max_batch_size"]) == ("fp32", "eager", 16)

    schema = server.client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/classify", "/v1/attention"):
        assert "multipart/form-data" in paths[path]["post"]["requestBody"]["content"]
        assert {"top_k", "protocol"} <= {p["name"] for p in paths[path]["post"]["parameters"]} or path != "/v1/classify"
    for path in ("/v1/models", "/healthz", "/readyz", "/metrics"):
        assert "get" in paths[path]
    top_k = next(p for p in paths["/v1/classify"]["post"]["parameters"] if p["name"] == "top_k")
    assert top_k["schema"]["maximum"] == 1000 and top_k["schema"]["minimum"] == 1

    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("vitzoo_serve_requests_total", "vitzoo_serve_errors_total", "vitzoo_serve_batch_size_bucket",
                 "vitzoo_serve_queue_seconds_bucket", "vitzoo_serve_model_seconds_bucket"):  # fmt: skip
        assert name in metrics.text

    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="top5"' in page.text and 'id="overlay"' in page.text and 'type="file"' in page.text
    assert "://" not in page.text  # nothing fetched from elsewhere: it works offline
    assert 'name="viewport"' in page.text


# -- model errors: a 5xx with the request id in the log, the server serving on ------------------------------------------
def test_a_model_error_is_a_5xx_with_its_request_id_logged(server):
    photo = (PHOTOS / "coffee.png").read_bytes()
    expected = classify(server, photo).json()["top"]

    def faulty():
        return classify(server, photo, headers={"X-Vitzoo-Fault": "raise", "X-Request-ID": "fault-raise-1"})

    with ThreadPoolExecutor(8) as pool:  # neighbours in its batch are retried alone and answered
        jobs = [pool.submit(faulty if i == 3 else classify, *([] if i == 3 else [server, photo])) for i in range(8)]
        answers = [j.result() for j in jobs]
    bad = answers.pop(3)
    assert bad.status_code == 500 and bad.json()["kind"] == "model_error"
    assert bad.json()["request_id"] == "fault-raise-1" == bad.headers["x-request-id"]
    for answer in answers:
        assert answer.status_code == 200
        assert_same_top(answer.json()["top"], expected)
    assert "fault-raise-1" in server.log.read_text()
    assert server.client.get("/readyz").status_code == 200


# -- a trained run's folder serves its own classes -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from conftest import train_tiny_digits_run

    run, _, val_dir = train_tiny_digits_run(tmp_path_factory.mktemp("serve_digits"), per_class=8, epochs=1)
    return run, val_dir


@pytest.mark.slow
def test_a_trained_run_serves_its_own_class_names(run_folder, tmp_path, capsys):
    folder, val_dir = run_folder
    image = next((val_dir / "7").iterdir())
    expected = vitzoo_predict(capsys, ["--model", str(folder), str(image), "--top-k", "3"])[0]["top"]
    srv = ServerProcess(["--model", str(folder), "--max-batch-size", "4", "--batch-timeout-ms", "2"], tmp_path / "log")
    try:
        srv.wait_ready()
        card = srv.client.get("/v1/models").json()["models"][0]
        assert card["num_classes"] == 10 and card["protocol"] == "run" and card["protocols"] == ["run"]
        answer = srv.client.post("/v1/classify", params={"top_k": 3}, files={"file": (image.name, image.read_bytes())})
        assert answer.status_code == 200, answer.text
        assert_same_top(answer.json()["top"], expected)
        assert {t["label"] for t in answer.json()["top"]} <= {str(d) for d in range(10)}  # its names, not ImageNet's
        too_many = srv.client.post("/v1/classify", params={"top_k": 11}, files={"file": ("x.png", image.read_bytes())})
        assert too_many.status_code == 422
        numbers = srv.client.post("/v1/attention", params={"format": "json"}, files={"file": ("x.png", image.read_bytes())})
        assert numbers.json()["grid"] == [4, 4]
    finally:
        srv.stop()


# -- the command line ---------------------------------------------------------------------------------------------------
def test_the_serve_subcommand_parses_and_refuses_bad_setups(tmp_path, weights, capsys):
    from vitzoo.cli.flags import config_values
    from vitzoo.cli.main import build_parser
    from vitzoo.serve import ServeConfig

    args = build_parser().parse_args(["serve", "--model", NAME, "--weights", "w.safetensors"])
    config = ServeConfig(**config_values(ServeConfig, args))
    assert (config.host, config.port, config.max_batch_size, config.batch_timeout_ms, config.workers) == \
        ("127.0.0.1", 8000, 16, 5.0, 1)  # fmt: skip
    assert config.precision is None and config.path.precision == "fp32" and config.weights == "w.safetensors"

    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert vitzoo_main(["serve", "--model", NAME, "--weights", str(weights), "--class-names", str(names)]) == 2
    assert "2 class names for a model with 1000 outputs" in capsys.readouterr().err
    assert vitzoo_main(["serve", "--model", NAME]) == 2
    assert "--weights is needed" in capsys.readouterr().err
    assert vitzoo_main(["serve", "--model", NAME, "--weights", str(weights), "--max-batch-size", "0"]) == 2
    assert vitzoo_main(["serve", "--model", "NoSuchModel", "--weights", str(weights)]) == 2


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_server(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "vitzoo", "serve", "--model", NAME, "--weights", str(broken),
                           "--port", str(port)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "could not load the model" in done.stderr
