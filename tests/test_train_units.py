"""vitzoo.train's parts against values computed here independently: losses, no-decay groups, lr schedule, recipes,
teachers, checkpoints, class alignment and seeded augmentation."""

import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vitzoo
from vitzoo.data.datasets import DatasetError
from vitzoo.train import checkpoint as ckpt
from vitzoo.train import data as train_data
from vitzoo.train.losses import TrainLoss, hard_distillation, soft_distillation
from vitzoo.train.optim import WarmupCosine, param_groups, scaled_lr
from vitzoo.train.recipe import ConfigError, TrainConfig, list_recipes, load_config
from vitzoo.train.teacher import TeacherError, load_teacher


def log_softmax_np(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 7, generator=gen, dtype=torch.float64) * 3 for _ in range(3)]


# -- losses ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_soft_distillation_is_kl_times_tau2_over_batch_times_classes(logits, tau):
    student, teacher, _ = logits
    log_s = log_softmax_np(student.numpy() / tau)
    log_t = log_softmax_np(teacher.numpy() / tau)
    kl_sum = float(np.sum(np.exp(log_t) * (log_t - log_s)))
    expected = kl_sum * tau**2 / (4 * 7)  # divided by numel (batch x classes), not by the batch
    got = soft_distillation(student, teacher, tau).item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got != pytest.approx(kl_sum * tau**2 / 4, rel=1e-3)


def test_hard_distillation_is_cross_entropy_to_teacher_argmax(logits):
    student, teacher, _ = logits
    picked = teacher.numpy().argmax(axis=1)
    expected = -np.mean(log_softmax_np(student.numpy())[np.arange(4), picked])
    assert hard_distillation(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def smoothed_ce_np(logits, labels, smoothing):
    logp = log_softmax_np(logits)
    nll = -logp[np.arange(len(labels)), labels]
    return float(np.mean((1 - smoothing) * nll - smoothing * logp.mean(axis=1)))


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_mix_follows_training_md(logits, kind):
    cls_logits, dist_logits, teacher = logits
    labels = torch.tensor([0, 3, 6, 2])
    alpha, tau, smoothing = 0.3, 2.0, 0.1
    loss = TrainLoss(smoothing, kind, alpha, tau)((cls_logits, dist_logits), labels, teacher).item()
    base = smoothed_ce_np(cls_logits.numpy(), labels.numpy(), smoothing)
    if kind == "hard":
        distill = -np.mean(log_softmax_np(dist_logits.numpy())[np.arange(4), teacher.numpy().argmax(1)])
    else:
        log_s, log_t = log_softmax_np(dist_logits.numpy() / tau), log_softmax_np(teacher.numpy() / tau)
        distill = np.sum(np.exp(log_t) * (log_t - log_s)) * tau**2 / 28
    assert loss == pytest.approx((1 - alpha) * base + alpha * distill, rel=1e-6)


def test_base_loss_with_mixup_soft_targets_and_errors(logits):
    cls_logits, _, _ = logits
    targets = torch.softmax(torch.randn(4, 7, dtype=torch.float64), dim=1)
    expected = float(np.mean(np.sum(-targets.numpy() * log_softmax_np(cls_logits.numpy()), axis=1)))
    assert TrainLoss(0.1)(cls_logits, targets).item() == pytest.approx(expected, rel=1e-6)
    labels = torch.tensor([1, 2, 3, 4])
    assert TrainLoss(0.1)(cls_logits, labels).item() == pytest.approx(
        smoothed_ce_np(cls_logits.numpy(), labels.numpy(), 0.1), rel=1e-6
    )
    # a distilled student without a teacher: DeiT's DistillationLoss ('none') takes the class token's output only
    other = torch.randn_like(cls_logits)
    assert TrainLoss(0.1)((cls_logits, other), labels).item() == pytest.approx(
        smoothed_ce_np(cls_logits.numpy(), labels.numpy(), 0.1), rel=1e-6
    )
    with pytest.raises(ValueError, match="teacher"):
        TrainLoss(0.1, "hard")((cls_logits, cls_logits), labels, None)


# -- optimizer ------------------------------------------------------------------------------------------------------
def small_model(distilled=True, classes=10):
    cfg = vitzoo.ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, distilled=distilled,
                           num_classes=classes)  # fmt: skip
    return vitzoo.build_model(cfg)


@pytest.mark.parametrize("distilled", [False, True])
def test_no_decay_groups(distilled):
    model = small_model(distilled)
    groups = {g["group"]: g for g in param_groups(model, 0.05)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    tokens = {"pos_embed", "cls_token"} | ({"dist_token"} if distilled else set())
    expected = {n for n in names.values() if n.endswith(".bias") or "norm" in n} | tokens
    assert no_decay == expected
    assert decay == set(names.values()) - expected
    assert all(n.endswith(".weight") and "norm" not in n for n in decay)
    assert "head.weight" in decay and "patch_embed.proj.weight" in decay and "blocks.0.attn.qkv.weight" in decay


def test_lr_scaling():
    assert scaled_lr(5e-4, 1024, 512) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 64, 512) == pytest.approx(6.25e-5)
    assert scaled_lr(5e-4, 64, None) == 5e-4


def test_warmup_cosine_schedule_by_hand_and_against_timm():
    peak, floor, start, warmup, total = 1e-3, 1e-5, 1e-6, 5, 30
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = WarmupCosine(opt, peak, floor, start, warmup, total)
    # by hand: linear warm-up from `start`, then cosine over the whole run (timm without warmup_prefix)
    assert schedule.apply(0) == pytest.approx(1e-6) and opt.param_groups[0]["lr"] == pytest.approx(1e-6)
    assert schedule.lr_at(2) == pytest.approx(1e-6 + 2 * (1e-3 - 1e-6) / 5)
    assert schedule.lr_at(15) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert schedule.lr_at(15) == pytest.approx(5.05e-4)
    assert schedule.lr_at(30) == pytest.approx(1e-5) and schedule.lr_at(100) == pytest.approx(1e-5)
    from timm.scheduler import CosineLRScheduler

    timm_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    timm_sched = CosineLRScheduler(timm_opt, t_initial=total, lr_min=floor, warmup_t=warmup, warmup_lr_init=start)
    for epoch in range(total):
        timm_sched.step(epoch)
        assert schedule.lr_at(epoch) == pytest.approx(timm_opt.param_groups[0]["lr"], rel=1e-12)
    # per-step: at whole epochs of 7 steps it is timm's per-epoch value
    per_step = WarmupCosine(opt, peak, floor, start, warmup * 7, total * 7)
    timm_sched.step(12)
    assert per_step.lr_at(12 * 7) == pytest.approx(timm_opt.param_groups[0]["lr"], rel=1e-12)


# -- recipes --------------------------------------------------------------------------------------------------------
def test_defaults_are_deits_recipe():
    cfg = TrainConfig()
    expected = {
        "epochs": 300, "batch_size": 64, "lr": 5e-4, "lr_base_batch": 512, "min_lr": 1e-5, "warmup_lr": 1e-6,
        "warmup_epochs": 5, "weight_decay": 0.05, "betas": (0.9, 0.999), "eps": 1e-8, "optimizer": "adamw",
        "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0, "mixup_switch_prob": 0.5, "mixup_prob": 1.0,
        "auto_augment": "rand-m9-mstd0.5-inc1", "crop_scale": (0.08, 1.0), "hflip": 0.5, "interpolation": "bicubic",
        "reprob": 0.25, "remode": "pixel", "recount": 1, "repeated_aug": 3, "drop_path": 0.1, "drop": 0.0,
        "ema": True, "ema_decay": 0.99996, "distillation": "none", "distillation_alpha": 0.5, "distillation_tau": 1.0,
        "eval_crop_pct": 0.875, "clip_grad": None,
    }  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.crop_ratio == pytest.approx((3 / 4, 4 / 3))


def test_recipe_files_and_overrides(tmp_path):
    assert {"deit_384_finetune", "small_data_finetune"} <= set(list_recipes())
    cfg = load_config("deit_384_finetune", model="DeiT_base_patch16_384", epochs=2)
    assert (cfg.img_size, cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.epochs) == (384, 5e-6, 5e-6, 1e-8, 2)
    (tmp_path / "r.json").write_text(json.dumps({"crop_scale": [0.5, 1], "clip_grad": None, "lr": 1}))
    cfg = load_config(tmp_path / "r.json")
    assert cfg.crop_scale == (0.5, 1.0) and cfg.clip_grad is None and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    (tmp_path / "bad.yaml").write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'lrr' \(did you mean 'lr'\?\)"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: ten\n")
    with pytest.raises(ConfigError, match="epochs must be int, got 'ten'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="a mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such recipe file; shipped recipes: deit_384_finetune"):
        load_config("nowhere")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "no model"),
        ({"model": "custom", "width": 32}, "custom model needs depth, heads, patch_size, img_size"),
        ({"model": "DeiT_tiny_patch16_224", "width": 32}, "only apply to model 'custom'"),
        ({"model": "DeiT_tiny_patch16_224", "distillation": "hard"}, "needs a teacher"),
        ({"model": "DeiT_tiny_patch16_224", "distillation": "medium", "teacher": "t"}, "none, soft, hard"),
        ({"model": "DeiT_tiny_patch16_224", "batch_size": 7}, "must be even"),
    ],
)
def test_inconsistent_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(**{"data": "d", "val": "v", **settings}).check()


def test_cli_flags_are_the_config_fields():
    from vitzoo.cli.flags import config_values
    from vitzoo.cli.main import build_parser

    args = build_parser().parse_args(
        ["train", "--model", "custom", "--crop-scale", "0.3", "1", "--no-ema", "--clip-grad", "none",
         "--distillation-tau", "2"]
    )  # fmt: skip
    assert args.config is None
    assert config_values(TrainConfig, args) == {"model": "custom", "crop_scale": [0.3, 1.0], "ema": False,
                                                "clip_grad": None, "distillation_tau": 2.0}  # fmt: skip


# -- teachers -------------------------------------------------------------------------------------------------------
class Pooled(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc = torch.nn.Linear(3, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript teachers are still accepted
def test_teachers_from_whole_model_files_and_names(tmp_path):
    torch.jit.script(Pooled(10)).save(str(tmp_path / "t.pt"))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(Pooled(10).eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    for path in ("t.pt", "t.pt2"):
        teacher = load_teacher(str(tmp_path / path), None, 10, 16, "cpu")
        assert teacher(torch.zeros(3, 3, 16, 16)).shape == (3, 10)
        assert not any(p.requires_grad for p in teacher.parameters())
        with pytest.raises(TeacherError, match="predicts 10 classes, the training data has 7"):
            load_teacher(str(tmp_path / path), None, 7, 16, "cpu")
    import torchvision

    torch.save(torchvision.models.get_model("resnet18", num_classes=10).state_dict(), tmp_path / "r18.pth")
    teacher = load_teacher("torchvision:resnet18", str(tmp_path / "r18.pth"), 10, 32, "cpu")
    assert not teacher.training and teacher.fc.out_features == 10
    with pytest.raises(TeacherError, match="predicts 10 classes, the training data has 100"):
        load_teacher("resnet18", str(tmp_path / "r18.pth"), 100, 32, "cpu")
    with pytest.raises(TeacherError, match="needs its trained weights"):
        load_teacher("resnet18", None, 10, 32, "cpu")
    with pytest.raises(TeacherError, match="not a file and not a vitzoo, torchvision or timm model name"):
        load_teacher("no_such_net", str(tmp_path / "r18.pth"), 10, 32, "cpu")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(TeacherError, match="not a TorchScript file"):
        load_teacher(str(tmp_path / "junk.pt"), None, 10, 32, "cpu")


def test_vitzoo_teacher_keeps_its_class_count(tmp_path):
    from safetensors.torch import save_file

    model = vitzoo.create_model("DeiT_tiny_patch16_224", num_classes=5)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    teacher = load_teacher("DeiT_tiny_patch16_224", str(tmp_path / "w.safetensors"), 5, 224, "cpu")
    assert teacher.num_classes == 5
    with pytest.raises(TeacherError, match="predicts 5 classes, the training data has 1000"):
        load_teacher("vitzoo:DeiT_tiny_patch16_224", str(tmp_path / "w.safetensors"), 1000, 224, "cpu")


# -- checkpoints ----------------------------------------------------------------------------------------------------
def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_rng_state_round_trip_and_safe_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.rng_state()
    ckpt.save_checkpoint(tmp_path / "c.pt", {"rng": [state]})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = ckpt.load_checkpoint(tmp_path / "c.pt")  # weights_only=True: plain types only
    ckpt.set_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "none.pt")
    torch.save({"model": {}}, tmp_path / "weights.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a vitzoo training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    saved = {"model": "custom", "arch": {"embed_dim": 32, "num_classes": 10}}
    with pytest.raises(ckpt.CheckpointError, match="another model.*embed_dim 32 != 64"):
        ckpt.check_identity(saved, {"model": "custom", "arch": {"embed_dim": 64, "num_classes": 10}}, tmp_path)


# -- data -----------------------------------------------------------------------------------------------------------
def image_folder(root, classes, per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_val_classes_are_matched_by_name(tmp_path):
    train = image_folder(tmp_path / "train", ["cat", "dog", "owl"])
    val = image_folder(tmp_path / "val", ["dog", "owl"])  # a subset: owl is val label 1 but train class 2
    sets = train_data.load_sets(train, val)
    assert sets.num_classes == 3 and sets.class_names == ["cat", "dog", "owl"]
    assert sorted({label for _, label in sets.val}) == [1, 2]
    image_folder(tmp_path / "val2", ["dog", "emu"])
    with pytest.raises(DatasetError, match=r"class folder\(s\) emu have no images in the train set"):
        train_data.load_sets(train, tmp_path / "val2")
    (tmp_path / "val.txt").write_text("val/dog/0.png 1\nval/dog/1.png 5\n")
    with pytest.raises(DatasetError, match=r"label\(s\) 5 do not occur in the train set"):
        train_data.load_sets(train, tmp_path / "val.txt")


def test_augmentation_is_a_function_of_its_seed_and_leaves_global_rngs_alone(tmp_path):
    folder = image_folder(tmp_path / "train", ["a"], per_class=1)
    cfg = TrainConfig()
    transform = train_data.train_transform(cfg, 16, (0.5,) * 3, (0.5,) * 3)
    dataset = train_data.TrainDataset([(folder / "a" / "0.png", 0)], transform)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    a, b, c = dataset[(0, 11)][0], dataset[(0, 11)][0], dataset[(0, 12)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_posterize_at_zero_bits_gives_black_instead_of_failing():
    img = Image.new("RGB", (4, 4), (200, 100, 50))
    assert train_data._posterize(img, 0).getextrema() == ((0, 0),) * 3
    assert train_data._posterize(img, 8) is img
    assert train_data._posterize(img, 1).getpixel((0, 0)) == (128, 0, 0)


# -- report ---------------------------------------------------------------------------------------------------------
def test_plot_is_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch):
    from vitzoo.train.report import write_plot

    rows = [{"epoch": 1, "train_loss": 2.0, "val_top1": 0.3}, {"epoch": 2, "train_loss": 1.5, "val_top1": 0.6}]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert write_plot(rows, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
