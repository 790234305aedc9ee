"""The "paddle" peer of the CPU engine benchmark: Paddle Inference with oneDNN, the seed's own engine, running
PaddleClas's own ViT/DeiT code holding a vitzoo model's weights.

    prefix = export_paddle(model, "out/deit_tiny")       # vitzoo (torch) model -> out/deit_tiny.json + .pdiparams
    predict = PaddlePredictor(prefix, precision="bf16")  # oneDNN predictor, as PaddleClas's deploy code builds it
    logits = predict(images)                             # torch float32 [B, num_classes], any batch size

Paddle's OpenMP/oneDNN threads keep spinning after a call and slow torch work in the same process, so a benchmark
should time this engine in a process of its own. Torch is used only to read the state dict and to hand back logits.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16")
_STUB = "_vitzoo_ppcls"  # synthetic package standing in for paddleclas.ppcls (tests use another name: no clash)
_MODEL_EXTENSIONS = (".json", ".pdmodel")  # PIR program (Paddle >= 3) or the legacy ProgramDesc


def _import_paddle():
    """`import paddle`, undoing its side effect on the environment.

    Paddle's bootstrap sets OMP_NUM_THREADS=1 in os.environ when it is unset; every process started afterwards
    (a torch or onnxruntime benchmark worker) would then run on one thread. The predictor sets its own count.
    """
    before = os.environ.get("OMP_NUM_THREADS")
    with warnings.catch_warnings():  # its C++-extension helper warns, on import, that ccache is missing
        warnings.filterwarnings("ignore", message="No ccache found")
        import paddle

    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before
    return paddle


def _model_zoo_dir() -> Path:
    """PaddleClas's backbone model_zoo folder, found from the wheel's install record, not by import.

    `import paddleclas` pulls in requests, opencv and more; the two ViT files need only paddle.
    """
    try:
        dist = importlib.metadata.distribution("paddleclas")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError("paddleclas is not installed (pip install --no-deps paddleclas)") from None
    zoo = Path(dist.locate_file("paddleclas/ppcls/arch/backbone/model_zoo"))
    missing = [f for f in ("vision_transformer.py", "distilled_vision_transformer.py") if not (zoo / f).is_file()]
    if missing:
        raise ModuleNotFoundError(f"paddleclas {dist.version} lacks {', '.join(missing)} under {zoo}")
    return zoo


def _runtime_reason(precision: str) -> str | None:
    """Why an exported model cannot run at `precision` here (paddleclas is not needed for that), or None."""
    if precision not in PRECISIONS:
        return f"Paddle Inference runs {' or '.join(PRECISIONS)} here, not {precision!r} (int8 needs a quantized model)"
    try:
        paddle = _import_paddle()
    except ImportError as e:
        return f"paddle is not installed (pip install paddlepaddle): {e}"
    except OSError as e:  # a broken install: its shared libraries fail to load
        return f"paddle is installed but does not load: {e}"
    core = paddle.base.core
    if not core.is_compiled_with_mkldnn():
        return f"this paddle {paddle.__version__} build has no oneDNN"
    if precision == "bf16" and not _cpu_has_fast_bf16(core):
        # Paddle still runs bf16 on plain AVX512 (its docs: "runs, performance unknown"): no peer worth timing
        return "bf16 needs a CPU with AVX512-BF16 or AMX (no avx512_bf16 / amx_bf16 here)"
    return None


def _cpu_has_fast_bf16(core) -> bool:
    query = getattr(core, "supports_bfloat16_fast_performance", None)  # Paddle's own check: oneDNN's avx512_bf16
    if query is not None:
        return bool(query())
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def unavailable_reason(precision: str = "fp32") -> str | None:
    """None when Paddle Inference can export and run a vitzoo model at `precision` ("fp32" or "bf16") here,
    else a one-line reason."""
    reason = _runtime_reason(precision)
    if reason is None:
        try:
            _model_zoo_dir()
        except ModuleNotFoundError as e:
            return str(e)
    return reason


@functools.cache
def _paddleclas_modules() -> types.SimpleNamespace:
    """PaddleClas's vision_transformer and distilled_vision_transformer modules, imported without `paddleclas`.

    They sit under a synthetic package (`from ....utils.save_load import load_dygraph_pretrain` must resolve), whose
    only real folder is model_zoo, and whose save_load is a stub: pretrained downloads are not ours to make.
    """
    zoo_dir = _model_zoo_dir()
    _import_paddle()  # first import here, so its OMP_NUM_THREADS side effect is undone

    def load_dygraph_pretrain(*args, **kwargs):
        raise RuntimeError("vitzoo builds PaddleClas models without pretrained weights; it loads vitzoo's own")

    zoo = f"{_STUB}.arch.backbone.model_zoo"
    for name in (_STUB, f"{_STUB}.arch", f"{_STUB}.arch.backbone", zoo, f"{_STUB}.utils"):
        package = types.ModuleType(name)
        package.__path__ = [str(zoo_dir)] if name == zoo else []
        sys.modules[name] = package
    save_load = types.ModuleType(f"{_STUB}.utils.save_load")
    save_load.load_dygraph_pretrain = load_dygraph_pretrain
    sys.modules[save_load.__name__] = save_load
    return types.SimpleNamespace(
        vit=importlib.import_module(f"{zoo}.vision_transformer"),
        deit=importlib.import_module(f"{zoo}.distilled_vision_transformer"),
    )


def paddleclas_model(cfg):
    """A PaddleClas VisionTransformer / DistilledVisionTransformer (eval mode) of a vitzoo ViTConfig's shape.

    Its parameters keep PaddleClas's random init: load weights with `set_state_dict` (see `export_paddle`).
    """
    if cfg.qk_scale is not None and cfg.qk_scale == 0:
        # PaddleClas computes `qk_scale or head_dim ** -0.5`: a zero scale would silently become the default
        raise ValueError("qk_scale=0 cannot be expressed in PaddleClas's ViT (it takes 0 as 'use the default')")
    if isinstance(cfg.img_size, (tuple, list)) or isinstance(cfg.patch_size, (tuple, list)):
        raise ValueError(f"PaddleClas's ViT takes square int sizes, got {cfg.img_size=} {cfg.patch_size=}")
    zoo = _paddleclas_modules()
    cls = zoo.deit.DistilledVisionTransformer if cfg.distilled else zoo.vit.VisionTransformer
    model = cls(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        class_num=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,  # hidden = int(dim * mlp_ratio) in both
        qkv_bias=cfg.qkv_bias,
        qk_scale=cfg.qk_scale,
        epsilon=cfg.norm_eps,  # PaddleClas defaults to 1e-5, DeiT and vitzoo to 1e-6: always pass it
    )  # dropout and drop-path left at 0: this is an inference export
    model.eval()
    return model


def export_paddle(model: torch.nn.Module, prefix: str | os.PathLike) -> str:
    """Save a vitzoo model as a Paddle Inference model: `prefix.json` (PIR program) + `prefix.pdiparams`.

    Builds PaddleClas's equivalent, loads the vitzoo weights into it (names are shared; Paddle's Linear stores
    weight as [in, out], so 2-D weights are transposed) and saves it with a dynamic batch axis. Returns `prefix`.
    """
    from vitzoo.weights.pdparams import canonical_to_paddle  # the one place the transposition rule lives

    paddle = _import_paddle()
    prefix = str(prefix)
    # reset_classifier changes the head without touching .cfg: build the head the weights actually have
    cfg = model.cfg.replace(num_classes=getattr(model, "num_classes", model.cfg.num_classes))
    target = paddleclas_model(cfg)

    state = canonical_to_paddle(model.state_dict())
    expected = {name: tuple(p.shape) for name, p in target.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [f"{k}: {state[k].shape} vs {v}" for k, v in expected.items() if k in state and state[k].shape != v]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{prefix}: the vitzoo state dict does not fit PaddleClas's {type(target).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    target.set_state_dict(state)

    spec = paddle.static.InputSpec([None, cfg.in_chans, cfg.img_size, cfg.img_size], "float32", "x")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    try:
        # full_graph=True: whole-program (AST) conversion, which honours input_spec; the default bytecode tracer
        # warns that it ignores it (jit.save still used it, but a saved program should not rest on that)
        paddle.jit.save(paddle.jit.to_static(target, input_spec=[spec], full_graph=True), prefix)
    except Exception as e:
        raise RuntimeError(f"{prefix}: paddle.jit.save failed: {type(e).__name__}: {e}") from e
    _model_files(prefix)  # fail here, naming the prefix, rather than at predictor creation
    return prefix


def _model_files(prefix: str) -> tuple[str, str]:
    params = prefix + ".pdiparams"
    for ext in _MODEL_EXTENSIONS:
        if os.path.isfile(prefix + ext) and os.path.isfile(params):
            return prefix + ext, params
    wanted = " or ".join(prefix + ext for ext in _MODEL_EXTENSIONS)
    raise FileNotFoundError(f"no Paddle inference model at {prefix!r}: expected {wanted}, and {params}")


class PaddlePredictor:
    """A Paddle Inference predictor on CPU with oneDNN (fp32, or bf16 through oneDNN's bf16 pass).

    Configured as PaddleClas's deploy/utils/predictor.py does it (IR optimisation, a bounded oneDNN shape cache,
    zero-copy feeds) but without `enable_memory_optim()`: on Paddle 3.3 it makes create_predictor fail on a PIR
    (.json) model ("Not find predictor_id 0 and pass_name memory_optimize_pass"). bf16 is on request only;
    PaddleClas's deploy code never turns it on.

    `threads` is a ceiling Paddle does not enforce alone: with OMP_NUM_THREADS unset at process start, oneDNN still
    ran on every core with threads=1 (measured: 2 busy threads on 2 cores; setting it in os.environ after torch
    was imported did not help either). A benchmark worker wanting fewer threads than cores should be started with
    OMP_NUM_THREADS=threads in its environment.
    Not thread-safe: one call at a time.
    """

    def __init__(self, prefix: str | os.PathLike, precision: str = "fp32", threads: int | None = None):
        reason = _runtime_reason(precision)
        if reason is not None:
            raise RuntimeError(f"{prefix}: cannot run Paddle Inference: {reason}")
        paddle = _import_paddle()
        self.prefix = str(prefix)
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads() or os.cpu_count() or 1)
        model_file, params_file = _model_files(self.prefix)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.threads < cores and os.environ.get("OMP_NUM_THREADS") != str(self.threads):
            warnings.warn(
                f"PaddlePredictor(threads={self.threads}): without OMP_NUM_THREADS={self.threads} set before the "
                "process imported torch and paddle, oneDNN may use every core",
                RuntimeWarning,
                stacklevel=2,
            )

        config = paddle.inference.Config(model_file, params_file)
        config.disable_glog_info()  # first: otherwise the config and every IR pass log to stderr
        config.disable_gpu()
        config.set_mkldnn_cache_capacity(10)  # oneDNN keeps primitives per input shape: bound it, as PaddleClas does
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(self.threads)
        if precision == "bf16":
            config.enable_mkldnn_bfloat16()
        config.switch_ir_optim(True)
        config.switch_use_feed_fetch_ops(False)
        try:
            self._predictor = paddle.inference.create_predictor(config)
        except Exception as e:
            raise RuntimeError(f"{model_file}: Paddle Inference could not load it: {type(e).__name__}: {e}") from e

        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, images) -> torch.Tensor:
        """Float32 logits [B, classes] (CPU torch tensor) for images [B, C, H, W] (torch tensor or numpy array)."""
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float32).numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        if array.ndim != 4 or array.shape[0] < 1:
            raise ValueError(f"{self.prefix}: expected images [B, C, H, W] with B >= 1, got shape {array.shape}")
        try:
            self._input.reshape(list(array.shape))  # a new batch size is just a new shape: B is dynamic
            self._input.copy_from_cpu(array)
            self._predictor.run()
            logits = self._output.copy_to_cpu()  # a fresh array: safe to hand to torch without copying again
        except Exception as e:  # Paddle cannot say the expected C, H, W before a run; its error can
            raise RuntimeError(f"{self.prefix}: Paddle Inference failed on input {array.shape}: {e}") from e
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    def __repr__(self) -> str:
        return f"PaddlePredictor({self.prefix!r}, precision={self.precision!r}, threads={self.threads})"
