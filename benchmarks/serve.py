"""Load test of `vitzoo serve` on loopback, beside the same work without HTTP.

For each model: the server runs as its own process on 127.0.0.1; a second process sends real photographs (scikit-image's
samples as JPEG) to /v1/classify from 1, 8 and 32 concurrent clients for a fixed time each, then preprocessed FP32
tensors to the Open Inference Protocol's /v2/models/{name}/infer (binary tensor data, as tritonclient sends them), and
records throughput, p50/p99 latency and errors. In the same run, one process does the same work without HTTP: decode +
the seed's preprocessing + the model at the server's batch size and path; the server's overhead is the gap between the
two. Also measured: start-up time to ready, the server's CPU while idle, and its own cost per request: a ~100 KB
tensor POSTed to /v2 of a model too small to matter (one block, width 16), the server's CPU seconds per request.

    python benchmarks/serve.py [--models DeiT_small_patch16_224,ViT_base_patch16_224] [--duration 30]
        [--concurrency 1,8,32] [--max-batch-size 16] [--precision bf16] [--backend fast] [--out benchmarks]

Writes serve.json and serve.md. Every request goes to 127.0.0.1 only; each load is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg",
          "hubble_deep_field.jpg", "ihc.png")  # fmt: skip
MAX_REQUESTS = 100_000  # a bound on each load, whatever the duration


def jpeg_photos(folder: Path) -> list[Path]:
    """scikit-image's colour photographs re-encoded as JPEG (quality 90), as clients would send them."""
    import skimage.data
    from PIL import Image

    source = Path(skimage.data.__file__).parent
    out = []
    for name in PHOTOS:
        path = folder / (Path(name).stem + ".jpg")
        with Image.open(source / name) as img:
            img.convert("RGB").save(path, quality=90)
        out.append(path)
    return out


# -- the load generator (a process of its own) -------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children that have been waited for (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def v2_body(tensor) -> tuple[bytes, dict]:
    """An infer request with `tensor` (float32 [N,3,H,W]) as binary data, asking for the top-5 as binary data too."""
    head = json.dumps({
        "inputs": [{"name": "images", "shape": list(tensor.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes}}],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("top_k_indices", "top_k_probabilities")],
    }).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + tensor.astype("<f4").tobytes(), headers


async def _load(url: str, photos: list[bytes], concurrency: int, duration: float, headers: dict | None = None) -> dict:
    import httpx

    latencies, errors, batch_sizes = [], {}, []
    deadline = time.perf_counter() + duration
    sent = 0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        i = k
        while time.perf_counter() < deadline and sent < MAX_REQUESTS:
            sent += 1
            body = photos[i % len(photos)]
            i += concurrency
            tick = time.perf_counter()
            try:
                response = await http.post(url, content=body, headers=headers or {"Content-Type": "image/jpeg"})
                status = response.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            ms = (time.perf_counter() - tick) * 1000
            if status == 200:
                latencies.append(ms)
                if headers is None:
                    batch_sizes.append(response.json().get("batch_size", 1))
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {
        "concurrency": concurrency, "seconds": round(wall, 2), "answered": len(latencies),
        "errors": sum(errors.values()), "errors_by_status": errors,
        "images_per_s": round(len(latencies) / wall, 2), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "mean_batch_size": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
    }  # fmt: skip


def load_main(args) -> None:
    headers = None
    if args.photos.endswith(".npy"):  # preprocessed tensors for /v2, one request per image
        import numpy as np

        tensors = np.load(args.photos)
        bodies = [v2_body(t[None]) for t in tensors]
        photos, headers = [b for b, _ in bodies], bodies[0][1]
    else:
        photos = [Path(p).read_bytes() for p in args.photos.split(",")]
    result = asyncio.run(_load(args.url, photos, args.load_concurrency, args.duration, headers))
    print(json.dumps(result))


# -- the same work without HTTP --------------------------------------------------------------------------------------
def in_process(name: str, weights: Path, photos: list[Path], batch_size: int, precision: str, backend: str,
               duration: float, threads: int) -> dict:  # fmt: skip
    """Decode + seed preprocessing + the model on batches of `batch_size`, in one process, for `duration` seconds."""
    import torch

    import vitzoo
    from vitzoo.infer import build_path

    torch.set_num_threads(threads)
    model = vitzoo.create_model(name, weights=weights)
    runner = build_path(model, precision, backend)
    transform = vitzoo.eval_transform(name)
    data = [p.read_bytes() for p in photos]
    runner(torch.stack([transform(data[i % len(data)]) for i in range(batch_size)]))  # warm
    done, i = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration or done == 0:
        batch = torch.stack([transform(data[(i + k) % len(data)]) for k in range(batch_size)])
        runner(batch).softmax(-1).topk(5)
        i += batch_size
        done += batch_size
    wall = time.perf_counter() - start
    return {"images_per_s": round(done / wall, 2), "images": done, "seconds": round(wall, 2),
            "batch_size": batch_size, "threads": threads}  # fmt: skip


# -- the run ------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def bench_model(name: str, args, work: Path, photos: list[Path], log) -> dict:
    from safetensors.torch import save_file

    import vitzoo
    from vitzoo.infer import lively_init_

    import numpy as np

    weights = work / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in lively_init_(vitzoo.create_model(name)).state_dict().items()}, weights)
    tensors = work / f"{name}.npy"
    transform = vitzoo.eval_transform(name)
    np.save(tensors, np.stack([transform(p).numpy() for p in photos]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "vitzoo", "serve", "--model", name, "--weights", str(weights), "--port",
                  str(port), "--max-batch-size", str(args.max_batch_size), "--batch-timeout-ms",
                  str(args.batch_timeout_ms), "--precision", args.precision, "--log-level", "warning"]  # fmt: skip
    if args.backend:
        server_cmd += ["--backend", args.backend]
    server = subprocess.Popen(server_cmd, stdout=log, stderr=log)
    record = {"model": name, "server_command": shlex.join(server_cmd[3:]).replace(str(work), "$WORK"), "loads": []}
    try:
        record["ready_s"] = round(wait_ready(base, server), 1)
        record["idle_cpu_percent"] = idle_cpu(server.pid)
        runs = [("/v1 JPEG", base + "/v1/classify", ",".join(map(str, photos)), c) for c in args.concurrency]
        runs += [("/v2 FP32 tensor", f"{base}/v2/models/{name}/infer", str(tensors), c) for c in args.v2_concurrency]
        for route, url, inputs, concurrency in runs:
            load = run_load(url, inputs, concurrency, args.duration)
            load["route"] = route
            print(f"  {name} {route} concurrency {concurrency}: {load}", flush=True)
            record["loads"].append(load)
        import httpx

        record["server_healthy_after"] = httpx.get(base + "/healthz", timeout=5).status_code == 200
        record["server_model"] = httpx.get(base + "/v1/models", timeout=5).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    # without HTTP, after the server has gone: the machine's whole CPU, as the server had it
    threads = args.threads or (os.cpu_count() or 1)
    record["in_process"] = in_process(name, weights, photos, args.max_batch_size, args.precision,
                                      args.backend or "eager", args.duration, threads)  # fmt: skip
    print(f"  {name} in process: {record['in_process']}", flush=True)
    base_ips = record["in_process"]["images_per_s"]
    by_c = {load["concurrency"]: load for load in record["loads"] if load["route"] == "/v1 JPEG"}
    targets = [{"target": "0 errors", "value": sum(load["errors"] for load in record["loads"]), "met": None}]
    targets[0]["met"] = targets[0]["value"] == 0
    if 32 in by_c:
        ratio = round(by_c[32]["images_per_s"] / base_ips, 3)
        targets.append({"target": "served images/s at concurrency 32 >= 0.85 x in-process", "value": ratio,
                        "met": ratio >= 0.85})  # fmt: skip
    if 8 in by_c and by_c[8]["p50_ms"]:
        ratio = round(by_c[8]["p99_ms"] / by_c[8]["p50_ms"], 2)
        targets.append({"target": "p99 <= 3 x p50 at concurrency 8", "value": ratio, "met": ratio <= 3})
    targets.append({"target": "idle CPU < 2% of a core", "value": record["idle_cpu_percent"],
                    "met": record["idle_cpu_percent"] < 2})  # fmt: skip
    record["targets"] = targets
    return record


def run_load(url: str, inputs: str, concurrency: int, duration: float) -> dict:
    """One load from a process of its own (the server's CPU is not shared with the client's Python)."""
    cmd = [sys.executable, __file__, "--load-url", url, "--load-concurrency", str(concurrency), "--duration",
           str(duration), "--photos", inputs]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if proc.returncode:
        raise RuntimeError(f"the load generator failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def idle_cpu(pid: int, seconds: float = 10.0) -> float:
    """The server's CPU while nobody asks anything, in % of a core."""
    time.sleep(1.0)  # the warm-up's last work done
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return round(100 * (_cpu_seconds(pid) - before) / seconds, 2)


def stack_cost(args, work: Path, log) -> dict:
    """The server's own cost per request: ~100 KB FP32 tensors POSTed to /v2 of a one-block width-16 model at 96 px
    (its forward is ~0.1 ms), 16 clients; the server process's CPU seconds over the requests answered."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import vitzoo
    from vitzoo.factory import write_model_card

    folder = work / "tiny_run"
    folder.mkdir()
    model = vitzoo.build_model(vitzoo.ViTConfig(img_size=96, patch_size=16, embed_dim=16, depth=1, num_heads=1,
                                                num_classes=10))  # fmt: skip
    save_file(model.state_dict(), folder / "model.safetensors")
    transform = vitzoo.data.transforms.center_crop_transform(96, 0.875, (0.5,) * 3, (0.5,) * 3)
    write_model_card(folder, model, [str(i) for i in range(10)], transform, "model.safetensors")
    tensors = work / "tiny.npy"
    np.save(tensors, torch.randn(8, 3, 96, 96).numpy())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "vitzoo", "serve", "--model", str(folder), "--port", str(port),
                               "--log-level", "warning"], stdout=log, stderr=log)  # fmt: skip
    try:
        ready_s = wait_ready(base, server)
        before = _cpu_seconds(server.pid)
        load = run_load(f"{base}/v2/models/tiny_run/infer", str(tensors), 16, args.duration)
        cpu = _cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"request_bytes": 3 * 96 * 96 * 4, "ready_s": round(ready_s, 1), **load,
            "server_cpu_ms_per_request": round(1000 * cpu / max(load["answered"], 1), 3)}


def to_markdown(doc: dict) -> str:
    lines = ["# `vitzoo serve` under load, beside the same work without HTTP", "",
             f"`{doc['command']}` on {doc['date']}: {doc['cpu']}.", "", doc["method"], ""]  # fmt: skip
    cost = doc["stack_cost"]
    lines += ["## The server's own cost", "",
              f"~{cost['request_bytes'] // 1000} KB FP32 tensors to /v2 of a one-block width-16 model, 16 clients: "
              f"**{cost['images_per_s']} requests/s**, **{cost['server_cpu_ms_per_request']} ms of server CPU per "
              f"request** (p50 {cost['p50_ms']} ms, p99 {cost['p99_ms']} ms, {cost['errors']} errors; ready in "
              f"{cost['ready_s']} s).", ""]  # fmt: skip
    for r in doc["records"]:
        ip = r["in_process"]
        lines += [f"## {r['model']}", "", f"Server: `vitzoo {r['server_command']}` (ready in {r['ready_s']} s; idle: "
                  f"{r['idle_cpu_percent']}% of a core).",
                  f"In process (decode + seed preprocessing + model, batch {ip['batch_size']}, {ip['threads']} "
                  f"threads): **{ip['images_per_s']} images/s**.", "",
                  "| route | concurrency | images/s | vs in-process | p50 ms | p99 ms | mean batch | answered | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for load in r["loads"]:
            lines.append(f"| {load['route']} | {load['concurrency']} | {load['images_per_s']} | "
                         f"{load['images_per_s'] / ip['images_per_s']:.3f} | {load['p50_ms']} | {load['p99_ms']} | "
                         f"{load['mean_batch_size']} | {load['answered']} | {load['errors']} |")  # fmt: skip
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {'met' if t['met'] else '**missed**'} |" for t in r["targets"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="DeiT_small_patch16_224,ViT_base_patch16_224")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--v2-concurrency", default="8,32", help="concurrency levels of the /v2 tensor loads")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--backend", default="fast")
    parser.add_argument("--threads", type=int, help="in-process torch threads (default: every core)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--load-url", help=argparse.SUPPRESS)
    parser.add_argument("--load-concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_url:
        args.url = args.load_url
        return load_main(args)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.v2_concurrency = [int(c) for c in args.v2_concurrency.split(",") if c]
    from vitzoo.bench.latency import device_name

    doc = {
        "command": "python benchmarks/serve.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": device_name("cpu"),
        "method": (
            f"The server and the load generator are separate processes on this machine (loopback); each load runs "
            f"{args.duration:g} s, clients send JPEG photographs back to back (raw body, Content-Type image/jpeg) to "
            f"/v1, or one preprocessed image per request as a binary FP32 tensor to /v2, and count an answer when it "
            f"arrives. The server decodes and preprocesses in a thread pool and runs the model in a thread of its own "
            f"(torch's default thread count, every core: decoding shares them). The in-process figure does the same work in "
            f"one process, sequentially, with every core for the model, after the server has stopped."
        ),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitzoo-serve-bench-") as tmp:
        work = Path(tmp)
        photos = jpeg_photos(work)
        with open(args.out / "serve.log", "w") as log:
            doc["stack_cost"] = stack_cost(args, work, log)
            print(f"  server's own cost: {doc['stack_cost']}", flush=True)
            doc["records"] = [bench_model(m.strip(), args, work, photos, log) for m in args.models.split(",")]
    (args.out / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "serve.md").write_text(to_markdown(doc))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.md'}")


if __name__ == "__main__":
    main()
