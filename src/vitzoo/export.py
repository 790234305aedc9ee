"""`vitzoo export`: a model with its weights as a file another runtime loads (`run_export`).

    run_export(ExportConfig(model="DeiT_small_patch16_224", weights="paddleclas", out="deit_s.xml", precision="int8",
                            calibration="calib/"))

The formats and what each takes: `vitzoo.artifacts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ExportConfig


@dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    precision: str
    inputs: str  # what the file takes and gives, for people
    check: dict  # the file in its runtime against fp32 eager: images, max_abs_diff, cosine, top1_agreement
    checked_on: str  # what those images were

    def __str__(self) -> str:
        c = self.check
        return (f"wrote {self.path} and {self.path}.json ({self.inputs})\n"
                f"{self.format} {self.precision} vs fp32 eager on {c['images']} {self.checked_on}: max |logit "
                f"difference| {c['max_abs_diff']:.3g}, cosine {c['cosine']:.6f}, top-1 agreement "
                f"{c['top1_agreement']:.3f}")  # fmt: skip


def run_export(config: ExportConfig) -> ExportResult:
    """Export the model `config` names (a name with weights, or a run folder) to `config.out` in `config.format`
    (default: by the suffix) at `config.precision`; the file is loaded back in its runtime and compared with fp32
    eager on photographs before it is put in place."""
    from .artifacts import ArtifactError, export_artifact, runtime_of, unavailable_reason
    from .factory import load_model_from
    from .infer import calibration_images
    from .infer.fidelity import sample_photos

    config.check()
    runtime = runtime_of(config.out, config.format)
    reason = unavailable_reason(runtime, config.precision)
    if reason:  # refused before the model loads
        raise ArtifactError(reason)
    loaded = load_model_from(config, img_size=config.img_size)
    transform = loaded.transform()
    calibration = what = None
    if config.precision == "int8":
        data, root, what = loaded.calibration_source(config.calibration)
        calibration = calibration_images(data, transform, config.calibration_size, root=root)
    # the model's own kind of images where the run recorded them, else photographs
    own = loaded.data_set("val")
    if own is not None:
        images, checked_on = calibration_images(own[0], transform, 16, root=own[1]), f"images of {own[0]}"
    else:
        images, checked_on = sample_photos(None, transform=transform), "photographs (scikit-image)"
        if images is None:
            checked_on = "random images (scikit-image is not installed)"
    card, check = export_artifact(loaded, config.out, runtime, config.precision, calibration, what,
                                  config.batch_size, images)  # fmt: skip
    size = card.img_size
    batch = "batch" if card.batch is None else str(card.batch)
    inputs = (f"{runtime} {config.precision}: input 'images' [{batch}, 3, {size}, {size}] fp32, output 'logits' "
              f"[{batch}, {card.num_classes}] fp32")  # fmt: skip
    return ExportResult(config.out, runtime, config.precision, inputs, check, checked_on)
