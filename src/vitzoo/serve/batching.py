"""The model worker: LitServe collects the queued requests into batches (up to --max-batch-size, waiting at most
--batch-timeout-ms) and hands each batch to `ModelAPI.predict` in a worker process of its own.

Requests arrive already decoded and preprocessed (the HTTP process did it), so a batch holds only good images. A
batch may mix /v1/classify and /v1/attention requests: each kind goes through the model as one call. Each answer
carries its batch's size and times for the metrics. If a batch's model call fails, its requests are retried one by
one, so one bad request cannot fail its neighbours, and the one that fails alone gets an error answer (a 5xx) while
the worker lives on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from queue import Empty

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

log = logging.getLogger("vitzoo.serve")

BATCH_PATH = "/v1/_batch"  # LitServe's route for this API; the server replaces it with its own checked routes
FAULTS_ENV = "VITZOO_SERVE_FAULTS"  # "1": requests may ask for an injected fault (tests of the error paths only)


def _exit_with_parent(interval: float = 1.0) -> None:
    """A worker whose server was killed (SIGKILL, no clean shutdown) exits too instead of living on as an orphan."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="vitzoo-parent-watch").start()


def _identity(image):
    return image


class PromptBatchedLoop(BatchedLoop):
    """LitServe's batched loop, with the batch collected the way --batch-timeout-ms promises.

    LitServe's own collection (litserve 0.2.19, `collate_requests`) opens a window of batch_timeout when the worker
    asks for a batch and polls the request queue (a multiprocessing Manager queue: a round trip through another
    process per request, ~0.3 ms for a 224x224 image unloaded, several ms on a busy CPU) in 1 ms steps until the
    window closes. Two costs, measured on this 2-core machine with DeiT-tiny:
    - a deep queue is not drained: 32 concurrent clients, --batch-timeout-ms 5, about 25 requests waiting, and
      batches averaged 6.2 (at most 10 of 16): only as many requests as round trips fit in 5 ms;
    - an idle server polls the manager 1000 times a second: ~15% of a core with no traffic.
    Here the worker blocks until a first request arrives (idle costs nothing), waits at most batch_timeout after
    it for more, and always takes what is already waiting, up to max_batch_size: the same 32 clients get batches
    of 15 on average.
    """

    def get_batch_requests(self, lit_api, request_queue, transport):
        payloads, timed_out, deadline = [], [], None
        while len(payloads) < lit_api.max_batch_size:
            try:
                if deadline is None:  # nothing yet: block (a second at most, so the loop can notice shutdown)
                    request = request_queue.get(timeout=1.0)
                else:
                    remaining = deadline - time.monotonic()
                    request = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
            except Empty:
                break
            if request == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = request
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
            if lit_api.request_timeout not in (None, -1, False) and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
        return payloads, timed_out


class ModelAPI(ls.LitAPI):
    """Loads the model as `vitzoo predict` does (load_model + the --precision/--backend path), warms it, and answers
    batches. `config`: the server's ServeConfig (it travels to the spawned worker process)."""

    def __init__(self, config, max_batch_size: int = 16, batch_timeout: float = 0.005):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=BATCH_PATH,
                         loop=PromptBatchedLoop())  # fmt: skip
        self.config = config

    # -- startup: LitServe marks the worker ready when this returns ------------------------------------------------
    def setup(self, device) -> None:  # LitServe's device string is unused: --device says where the model runs
        import copy
        import dataclasses

        import torch

        from ..factory import load_model_from
        from ..infer.paths import image_shape

        config = self.config
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _exit_with_parent()
        threads = config.threads
        if not threads and torch.device(config.device).type == "cpu":
            # the HTTP process decodes and preprocesses on the same CPU: leave it a core. Measured on 2 cores,
            # 32 clients: 2 torch threads fighting the decoder took 3 req/s; 1 thread, 21 req/s
            threads = max(1, len(os.sched_getaffinity(0)) // config.workers - 1)
        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            loaded = load_model_from(config)
            self.classes = loaded.class_names(config.class_names)
            # attention maps need the fp32 model; the torch paths convert their model in place, so they get a copy
            self.model = loaded.model.eval().to(config.device)
            if config.precision != "fp32":
                loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
            self.runner = loaded.runner(config, config.protocol)
            self.run_device = torch.device(config.device)  # (LitAPI's own `device` is LitServe's to set)
            # warm: the first forward pays for lazy initialisation (and compilation); compiled or captured paths
            # also meet the largest batch now, not under the first burst of traffic
            warm = torch.zeros(*image_shape(self.model)).numpy()
            sizes = [1] + ([self.max_batch_size] if self.runner.path.backend in ("compile", "cudagraph") else [])
            for size in sizes:
                self._run("classify", [{"image": warm, "top_k": 1, "kind": "classify"}] * size)
            self._run("attention", [{"image": warm, "kind": "attention"}])
        except Exception as e:
            log.error("model worker could not start: %s", e)
            raise
        log.info("model worker ready in %.1f s: %s, %s", time.perf_counter() - started, config.model, self.runner)

    # -- batches ---------------------------------------------------------------------------------------------------
    def decode_request(self, request):
        return request  # already checked and preprocessed in the HTTP process

    def predict(self, x):
        """A batch: the list of requests PromptBatchedLoop collected (a list even at --max-batch-size 1)."""
        return self._answer(list(x))

    def encode_response(self, output):
        return output

    def _answer(self, items: list[dict]) -> list[dict]:
        started = time.monotonic()
        answers: list = [None] * len(items)
        for kind in ("classify", "attention"):
            group = [i for i, item in enumerate(items) if item["kind"] == kind]
            if not group:
                continue
            try:
                runs = [(group, *self._run(kind, [items[i] for i in group]))]
            except Exception as e:  # noqa: BLE001  (any model failure: answer, log, keep the worker alive)
                ids = ", ".join(items[i]["request_id"] for i in group)
                log.error("%s batch of %d failed (requests %s): %r%s", kind, len(group), ids, e,
                          "; retrying one by one" if len(group) > 1 else "")  # fmt: skip
                runs = [self._alone(kind, i, items[i]) for i in group] if len(group) > 1 else [([group[0]], e, 0.0)]
            for members, results, model_s in runs:
                for position, i in enumerate(members):
                    if isinstance(results, Exception):
                        answers[i] = {"error": f"{type(results).__name__}: {results}"}
                        continue
                    answers[i] = {**results[position], "batch_size": len(members), "batch_position": position,
                                  "model_s": model_s, "queue_s": max(0.0, started - items[i]["queued"])}  # fmt: skip
        return answers

    def _alone(self, kind: str, index: int, item: dict):
        try:
            return ([index], *self._run(kind, [item]))
        except Exception as e:  # noqa: BLE001
            log.error("%s request %s failed: %r", kind, item["request_id"], e)
            return [index], e, 0.0

    def _run(self, kind: str, items: list[dict]) -> tuple[list[dict], float]:
        """One model call for these requests: their answers and the seconds it took."""
        import torch

        from ..predict import predict
        from .attention import attention_grids

        self._inject_faults(items)
        images = [torch.from_numpy(item["image"]) for item in items]
        start = time.perf_counter()
        if kind == "classify":
            # the same function `vitzoo predict` calls, on the same preprocessed tensors: the same numbers
            top_k = max(item["top_k"] for item in items)
            results = predict(self.runner, images, _identity, top_k, self.run_device, classes=self.classes)
            answers = [{"top": r["top"][: item["top_k"]]} for r, item in zip(results, items)]
        else:
            answers = attention_grids(self.model, torch.stack(images).to(self.run_device))
        return answers, time.perf_counter() - start

    @staticmethod
    def _inject_faults(items: list[dict]) -> None:
        if os.environ.get(FAULTS_ENV) != "1":
            return
        faults = {item.get("fault") for item in items}
        if "exit" in faults:
            log.error("injected fault: the worker exits (requests %s)", ", ".join(i["request_id"] for i in items))
            os._exit(3)
        if "raise" in faults:
            raise RuntimeError("injected model fault")
