"""`vitzoo serve`: a model as a web service (LitServe: FastAPI + uvicorn, dynamic batching, worker processes).

Files, one concern each:
    cli.py        the flags (`add_parser` for `vitzoo`, `python -m vitzoo.serve` alone)
    server.py     the LitServe server: startup, readiness, the queue to the model worker
    app.py        the HTTP routes, their errors and the OpenAPI schema
    images.py     request body -> checked, preprocessed image (before it is queued)
    batching.py   the model worker: batches through the model, each answer as if alone
    attention.py  class-token attention and rollout; the PNG overlay
    metrics.py    Prometheus metrics
    page.html     the web page at /
Nothing is imported here, so `import vitzoo.serve.cli` needs no web stack.
"""
