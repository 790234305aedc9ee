"""The model behind the server: loaded and warmed in a thread, its batches run in a thread of their own.

Requests arrive decoded and preprocessed (the event loop's thread pool did that) and are queued. The batch loop waits
for a first request (an idle server costs nothing), then waits at most `batch_timeout_ms` for more and always takes
what is already waiting, up to `max_batch_size`; the model runs the batch in its own thread while the next one
collects. A batch may mix classify and attention requests: each kind goes through the model as one call. If a
batch's model call fails, its requests are retried one by one, so one bad request cannot fail its neighbours, and the
one that fails alone gets an error answer (a 5xx) while the server serves on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .images import RequestError

log = logging.getLogger("vitzoo.serve")
FAULTS_ENV = "VITZOO_SERVE_FAULTS"  # "1": requests may ask for an injected fault (tests of the error paths only)


@dataclass
class Job:
    """One image's request, waiting for its batch."""

    kind: str  # "classify" (logits and top-k) or "attention"
    image: np.ndarray  # [3, H, W] float32, preprocessed
    request_id: str
    top_k: int = 1
    fault: str | None = None
    queued: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None


class ModelWorker:
    """The model as the server runs it: `load()` (blocking, in a thread), then `submit(job)` from the event loop."""

    def __init__(self, config):
        self.config = config
        self.state = "loading"  # "ready" once loaded and warm, "failed" if it could not be
        self.error: str | None = None
        self.queue: asyncio.Queue | None = None
        # one thread runs every batch: the model is called from one thread only, in order
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vitzoo-model")

    # -- start-up ---------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model as `vitzoo predict` does (load_model + the --precision/--backend path) and warm it; the
        state says how it went."""
        import torch

        from ..factory import load_model_from

        config = self.config
        started = time.perf_counter()
        try:
            if config.threads:
                torch.set_num_threads(config.threads)
            loaded = load_model_from(config)
            self.classes = loaded.class_names(config.class_names)
            # attention maps need the fp32 model; the torch paths convert their model in place, so they get a copy (an
            # exported file has no PyTorch model: no attention maps)
            self.model = loaded.model.eval().to(config.device) if loaded.model is not None else None
            if self.model is not None and config.path.precision != "fp32":
                loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
            self.runner = loaded.runner(config, config.protocol)
            self.device = torch.device(config.device)
            # warm: the first forward pays for lazy initialisation (and compilation); compiled or captured paths also
            # meet the largest batch now, not under the first burst of traffic
            warm = np.zeros((3, loaded.img_size, loaded.img_size), dtype=np.float32)
            sizes = [1] + ([config.max_batch_size] if self.runner.path.backend in ("compile", "cudagraph") else [])
            for size in sizes:
                self._run("classify", [Job("classify", warm, "warm-up")] * size)
            if self.model is not None:
                self._run("attention", [Job("attention", warm, "warm-up")])
        except Exception as e:  # noqa: BLE001  (anything: the server says so and stops)
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("the model could not be loaded: %s", self.error)
            return
        self.state = "ready"
        log.info("model worker ready in %.1f s: %s, %s", time.perf_counter() - started, config.model, self.runner)

    # -- requests ---------------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> dict:
        """Queue `job` and wait (at most --timeout) for its answer; an error answer raises RequestError."""
        if self.state != "ready":
            raise RequestError(503, "not_ready", "the model is not loaded and warm yet; see GET /readyz")
        job.future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(job)
        try:
            answer = await asyncio.wait_for(asyncio.shield(job.future), self.config.timeout)
        except asyncio.TimeoutError:
            job.future.cancel()  # a batch not yet started leaves it out
            raise RequestError(504, "timeout", f"no answer within {self.config.timeout:g} s") from None
        except asyncio.CancelledError:  # the client went away: its batch may still run, the answer is dropped
            job.future.cancel()
            raise
        if "error" in answer:
            log.error("request %s: model error: %s", job.request_id, answer["error"])
            raise RequestError(500, "model_error", f"the model failed on this request: {answer['error']}")
        return answer

    async def batches(self) -> None:
        """The batch loop (a task on the server's event loop)."""
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        max_size, timeout = self.config.max_batch_size, self.config.batch_timeout_ms / 1000
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + timeout
            while len(batch) < max_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [job for job in batch if not job.future.done()]  # timed out or hung up while waiting
            if not batch:
                continue
            answers = await loop.run_in_executor(self.executor, self._answer, batch)
            for job, answer in zip(batch, answers):
                if not job.future.done():
                    job.future.set_result(answer)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- in the model's thread ---------------------------------------------------------------------------------------
    def _answer(self, jobs: list[Job]) -> list[dict]:
        started = time.monotonic()
        answers: list = [None] * len(jobs)
        for kind in ("classify", "attention"):
            group = [i for i, job in enumerate(jobs) if job.kind == kind]
            if not group:
                continue
            try:
                runs = [(group, *self._run(kind, [jobs[i] for i in group]))]
            except Exception as e:  # noqa: BLE001  (any model failure: answer, log, serve on)
                ids = ", ".join(jobs[i].request_id for i in group)
                log.error("%s batch of %d failed (requests %s): %r%s", kind, len(group), ids, e,
                          "; retrying one by one" if len(group) > 1 else "")  # fmt: skip
                runs = [self._alone(kind, i, jobs[i]) for i in group] if len(group) > 1 else [([group[0]], e, 0.0)]
            for members, results, model_s in runs:
                if not isinstance(results, Exception):
                    metrics.BATCH_SIZE.observe(len(members))
                    metrics.MODEL_SECONDS.observe(model_s)
                for position, i in enumerate(members):
                    metrics.QUEUE_SECONDS.observe(max(0.0, started - jobs[i].queued))
                    if isinstance(results, Exception):
                        answers[i] = {"error": f"{type(results).__name__}: {results}"}
                        continue
                    answers[i] = {**results[position], "batch_size": len(members), "model_s": model_s,
                                  "queue_s": max(0.0, started - jobs[i].queued)}  # fmt: skip
        return answers

    def _alone(self, kind: str, index: int, job: Job):
        try:
            return ([index], *self._run(kind, [job]))
        except Exception as e:  # noqa: BLE001
            log.error("%s request %s failed: %r", kind, job.request_id, e)
            return [index], e, 0.0

    def _run(self, kind: str, jobs: list[Job]) -> tuple[list[dict], float]:
        """One model call for these requests: their answers and the seconds it took."""
        import torch

        from ..labels import top_k
        from .attention import attention_grids

        self._inject_faults(jobs)
        images = torch.from_numpy(np.stack([job.image for job in jobs]))
        start = time.perf_counter()
        if kind == "classify":
            # the runner `vitzoo predict` builds, and its softmax and top-k: the same numbers
            logits = self.runner(images.to(self.device)).float()
            tops = top_k(logits.softmax(dim=1), max(job.top_k for job in jobs), self.classes)
            rows = logits.cpu().numpy()
            answers = [{"logits": row, "top": top[: job.top_k]} for row, top, job in zip(rows, tops, jobs)]
        else:
            answers = attention_grids(self.model, images.to(self.device))
        return answers, time.perf_counter() - start

    @staticmethod
    def _inject_faults(jobs: list[Job]) -> None:
        if os.environ.get(FAULTS_ENV) != "1":
            return
        faults = {job.fault for job in jobs}
        if "exit" in faults:
            log.error("injected fault: the process exits (requests %s)", ", ".join(j.request_id for j in jobs))
            os._exit(3)
        if "raise" in faults:
            raise RuntimeError("injected model fault")
