"""Load test of `vitzoo serve` on loopback, beside the same work without HTTP.

For each model: the server runs as its own process on 127.0.0.1; a second process sends real photographs (scikit-image's
samples as JPEG) from 1, 8 and 32 concurrent clients for a fixed time each, and records throughput, p50/p99 latency
and errors. In the same run, one process does the same work without HTTP: decode + the seed's preprocessing + the
model at the server's batch size and path; the server's overhead is the gap between the two.

    python benchmarks/serve.py [--models DeiT_small_patch16_224,ViT_base_patch16_224] [--duration 30]
        [--concurrency 1,8,32] [--max-batch-size 16] [--precision fp32] [--backend eager] [--out benchmarks]

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
sys.path.insert(0, str(HERE.parent / "src"))

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
async def _load(url: str, photos: list[bytes], concurrency: int, duration: float) -> dict:
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
                response = await http.post(url, content=body, headers={"Content-Type": "image/jpeg"})
                status = response.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            ms = (time.perf_counter() - tick) * 1000
            if status == 200:
                latencies.append(ms)
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
    photos = [Path(p).read_bytes() for p in args.photos.split(",")]
    result = asyncio.run(_load(args.url, photos, args.load_concurrency, args.duration))
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

    weights = work / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in lively_init_(vitzoo.create_model(name)).state_dict().items()}, weights)
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
        for concurrency in args.concurrency:
            cmd = [sys.executable, __file__, "--load-url", base + "/v1/classify", "--load-concurrency",
                   str(concurrency), "--duration", str(args.duration), "--photos", ",".join(map(str, photos))]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 300)
            if proc.returncode:
                raise RuntimeError(f"the load generator failed: {proc.stderr[-2000:]}")
            load = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {name} concurrency {concurrency}: {load}", flush=True)
            record["loads"].append(load)
        import httpx

        record["server_healthy_after"] = httpx.get(base + "/healthz", timeout=5).status_code == 200
        record["server_workers_threads"] = httpx.get(base + "/v1/models", timeout=5).json()
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
    by_c = {load["concurrency"]: load for load in record["loads"]}
    targets = [{"target": "0 errors", "value": sum(load["errors"] for load in record["loads"]), "met": None}]
    targets[0]["met"] = targets[0]["value"] == 0
    if 32 in by_c:
        ratio = round(by_c[32]["images_per_s"] / base_ips, 3)
        targets.append({"target": "served images/s at concurrency 32 >= 0.85 x in-process", "value": ratio,
                        "met": ratio >= 0.85})  # fmt: skip
    if 8 in by_c and by_c[8]["p50_ms"]:
        ratio = round(by_c[8]["p99_ms"] / by_c[8]["p50_ms"], 2)
        targets.append({"target": "p99 <= 3 x p50 at concurrency 8", "value": ratio, "met": ratio <= 3})
    record["targets"] = targets
    return record


def to_markdown(doc: dict) -> str:
    lines = ["# `vitzoo serve` under load, beside the same work without HTTP", "",
             f"`{doc['command']}` on {doc['date']}: {doc['cpu']}.", "", doc["method"], ""]  # fmt: skip
    for r in doc["records"]:
        ip = r["in_process"]
        lines += [f"## {r['model']}", "", f"Server: `vitzoo {r['server_command']}` (ready in {r['ready_s']} s).",
                  f"In process (decode + seed preprocessing + model, batch {ip['batch_size']}, {ip['threads']} "
                  f"threads): **{ip['images_per_s']} images/s**.", "",
                  "| concurrency | images/s | vs in-process | p50 ms | p99 ms | mean batch | answered | errors |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for load in r["loads"]:
            lines.append(f"| {load['concurrency']} | {load['images_per_s']} | "
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
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backend")
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
    from vitzoo.bench.latency import device_name

    doc = {
        "command": "python benchmarks/serve.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": device_name("cpu"),
        "method": (
            f"The server and the load generator are separate processes on this machine (loopback); each load runs "
            f"{args.duration:g} s, clients send JPEG photographs back to back (raw body, Content-Type image/jpeg) "
            f"and count an answer when its JSON arrives. The server decodes and preprocesses in its HTTP process and "
            f"runs the model in a worker (one torch thread fewer than the cores: one core decodes). The in-process "
            f"figure does the same work in one process, sequentially, with every core for the model, after the "
            f"server has stopped."
        ),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitzoo-serve-bench-") as tmp:
        work = Path(tmp)
        photos = jpeg_photos(work)
        with open(args.out / "serve.log", "w") as log:
            doc["records"] = [bench_model(m.strip(), args, work, photos, log) for m in args.models.split(",")]
    (args.out / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "serve.md").write_text(to_markdown(doc))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.md'}")


if __name__ == "__main__":
    main()
