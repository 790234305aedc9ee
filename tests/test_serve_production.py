"""`vitzoo serve` where production puts it: drained by SIGTERM under load, slow and idle clients, `--workers N`, and
replicas behind a real load balancer (Debian's HAProxy, started here on loopback with examples/haproxy/haproxy.cfg).
Every load is bounded in time and count and goes to 127.0.0.1 only."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_serve import NAME, PHOTOS, ServerProcess, free_port, weights  # noqa: F401

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow  # servers started and stopped under load: about a minute
ROOT = Path(__file__).resolve().parents[1]


class Load:
    """`clients` threads posting a photograph to `url` until stopped (at most `limit` requests each); each outcome
    kept with the time its request was sent: (sent, status or the exception's name)."""

    def __init__(self, url: str, clients: int = 16, limit: int = 2000):
        self.url, self.outcomes, self.stop_flag = url, [], threading.Event()
        self.photo = (PHOTOS / "coffee.png").read_bytes()
        self.threads = [threading.Thread(target=self._client, args=(limit,), daemon=True) for _ in range(clients)]

    def _client(self, limit: int) -> None:
        with httpx.Client(timeout=60, trust_env=False) as client:
            for _ in range(limit):
                if self.stop_flag.is_set():
                    return
                sent = time.monotonic()
                try:
                    answer = client.post(self.url, content=self.photo, headers={"Content-Type": "image/png"})
                    outcome = answer.status_code
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                self.outcomes.append((sent, outcome))
                if outcome != 200:
                    time.sleep(0.05)  # refused: a client backs off a little

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=120)

    def failures(self, since: float = 0.0) -> list:
        return [(t, o) for t, o in self.outcomes if t >= since and o != 200]


def start(weights, tmp_path, name: str, *extra: str, port: int | None = None) -> ServerProcess:  # noqa: F811
    server = ServerProcess(["--model", NAME, "--weights", str(weights), "--max-batch-size", "8", *extra],
                           tmp_path / f"{name}.log", port=port)  # fmt: skip
    server.wait_ready()
    return server


def test_sigterm_under_load_answers_everything_received_and_refuses_the_rest(weights, tmp_path):  # noqa: F811
    server = start(weights, tmp_path, "drain", "--grace-s", "20")
    try:
        with Load(f"{server.url}/v1/classify") as load:
            time.sleep(4)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert server.client.get("/readyz").status_code in (503,) or server.proc.poll() is not None
            server.proc.wait(timeout=25)
            exited = time.monotonic()
            time.sleep(0.5)
        from vitzoo.serve.app import DRAIN_SETTLE_S

        before = [(t, o) for t, o in load.outcomes if t < signalled]
        after = [(t, o) for t, o in load.outcomes if t >= signalled + DRAIN_SETTLE_S]  # sent well after it
        assert len(before) > 20, "the load should have been running"
        assert all(o == 200 for _, o in before), [o for _, o in before if o != 200]  # none reset, none refused
        assert after and all(o in (503, "ConnectError", "RemoteProtocolError", "ReadError") for _, o in after), after
        assert server.proc.returncode == 0 and exited - signalled < 20
        assert "draining" in server.log.read_text()
    finally:
        server.stop()


def test_slow_and_idle_clients_do_not_hold_up_the_others(weights, tmp_path):  # noqa: F811
    server = start(weights, tmp_path, "slow", "--header-timeout-s", "2")
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 200
        slow.settimeout(0.2)
        closed_after = None
        for byte in request:  # a header byte every 50 ms: 10 s for the whole, past the 2 s deadline
            try:
                slow.sendall(bytes([byte]))
                reply = slow.recv(1024)
            except socket.timeout:
                reply = None
            except (BrokenPipeError, ConnectionResetError):
                reply = b""
            if reply is not None:
                closed_after = time.monotonic() - started
                assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
                break
            photo = (PHOTOS / "chelsea.png").read_bytes()
            if byte % 7 == 0:  # the others are answered meanwhile
                answer = server.client.post("/v1/classify", content=photo, headers={"Content-Type": "image/png"})
                assert answer.status_code == 200
            time.sleep(0.05)
        assert closed_after is not None and 1.5 < closed_after < 6, closed_after
        assert server.client.get("/readyz").status_code == 200
    finally:
        for s in idle + [slow]:
            s.close()
        server.stop()


def test_workers_share_the_port_and_a_dead_one_is_replaced(weights, tmp_path):  # noqa: F811
    import os

    server = start(weights, tmp_path, "workers", "--workers", "2", "--threads", "1")
    try:
        photo = (PHOTOS / "coffee.png").read_bytes()
        expected = server.client.post("/v1/classify", content=photo, headers={"Content-Type": "image/png"}).json()
        workers = worker_pids(server)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline, answers = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            fresh = httpx.Client(base_url=server.url, timeout=30, trust_env=False)  # new connections: either worker
            try:
                answers.append(fresh.post("/v1/classify", content=photo, headers={"Content-Type": "image/png"}))
            except httpx.HTTPError:
                pass
            finally:
                fresh.close()
            now = worker_pids(server)
            recent = answers[-10:]
            if len(now) == 2 and workers[0] not in now and len(recent) == 10 and all(a.status_code == 200 for a in recent):
                break  # the replacement is up and both answer
            time.sleep(0.1)
        assert answers and all(a.status_code in (200, 503) for a in answers)
        assert [t["index"] for t in answers[-1].json()["top"]] == [t["index"] for t in expected["top"]]
        assert "died" in server.log.read_text() and "starting another" in server.log.read_text()
    finally:
        server.stop()


def worker_pids(server) -> list[int]:
    """The server's worker processes (multiprocessing's spawned children; not its resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(server.proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.fixture
def haproxy_config(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("no haproxy (apt-get install -y haproxy)")
    ports = {"front": free_port(), "replica1": free_port(), "replica2": free_port()}
    text = (ROOT / "examples" / "haproxy" / "haproxy.cfg").read_text()
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{ports['front']}")
    text = text.replace("127.0.0.1:8001", f"127.0.0.1:{ports['replica1']}")
    text = text.replace("127.0.0.1:8002", f"127.0.0.1:{ports['replica2']}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path, ports


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_replicas_behind_haproxy_lose_nothing_to_a_kill_or_a_rolling_restart(weights, tmp_path, haproxy_config):  # noqa: F811
    config, ports = haproxy_config
    replicas = {name: start(weights, tmp_path, name, "--threads", "1", port=ports[name])
                for name in ("replica1", "replica2")}  # fmt: skip
    balancer = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "haproxy.log", "wb"))  # fmt: skip
    front = f"http://127.0.0.1:{ports['front']}"
    try:
        with httpx.Client(trust_env=False, timeout=10) as probe:
            wait_until(lambda: _ok(probe, front + "/v2/health/ready"))
        # a replica killed outright, mid-load: its requests are retried on the other
        with Load(f"{front}/v1/classify") as load:
            time.sleep(3)
            replicas["replica1"].proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(4)
        assert not load.failures(), load.failures()[:5]
        assert sum(1 for t, o in load.outcomes if t > killed + 1 and o == 200) > 5  # the survivor carries on
        replicas["replica1"].stop()
        replicas["replica1"] = start(weights, tmp_path, "replica1-again", "--threads", "1", port=ports["replica1"])
        time.sleep(2)  # HAProxy's health check sees it up (rise 2, every 0.5 s)
        # a rolling restart under load: SIGTERM one (it drains), start it again, then the other
        with Load(f"{front}/v1/classify") as load:
            for name in ("replica2", "replica1"):
                time.sleep(2)
                replicas[name].proc.send_signal(signal.SIGTERM)
                replicas[name].proc.wait(timeout=40)
                replicas[name].stop()
                replicas[name] = start(weights, tmp_path, f"{name}-rolled", "--threads", "1", port=ports[name])
                time.sleep(2)
        assert not load.failures(), load.failures()[:5]
        assert len(load.outcomes) > 50
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        for server in replicas.values():
            server.stop()


def _ok(client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False
