"""`vitzoo serve`: a model as a web service (LitServe: FastAPI + uvicorn, dynamic batching, worker processes).

    from vitzoo.serve import ServeConfig, run
    run(ServeConfig(model="DeiT_small_patch16_224", weights="paddleclas"))

Files, one concern each:
    server.py     the LitServe server: startup, readiness, the queue to the model worker; `run(config)`
    app.py        the HTTP routes, their errors and the OpenAPI schema
    images.py     request body -> checked, preprocessed image (before it is queued)
    batching.py   the model worker: batches through the model, each answer as if alone
    attention.py  class-token attention and rollout; the PNG overlay
    metrics.py    Prometheus metrics
    page.html     the web page at /
The web stack is imported only when the server runs (`run`), so the command line needs none of it to start.
"""

from ..config import ServeConfig


class ServeError(RuntimeError):
    """The server could not start serving (its model worker failed to load the model)."""


def run(config: ServeConfig) -> int:
    """Serve `config`'s model until SIGINT or SIGTERM (`vitzoo.serve.server.run`)."""
    try:
        from .server import run as run_server
    except ImportError as e:
        raise ServeError(f"{e.name or e} is not installed; pip install 'vitzoo[serve]'") from None
    return run_server(config)


__all__ = ["ServeConfig", "ServeError", "run"]
