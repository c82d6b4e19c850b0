"""The LiteSeg training loop: one process or DistributedDataParallel under ``torchrun``, same command.

Ring 4 (faces): imports torch, numpy, tqdm, matplotlib (optional) and ``liteseg_ros.model`` /
``liteseg_ros.classes`` / ``liteseg_ros.train``; never rclpy, message packages or ``liteseg_ros.node`` /
``liteseg_ros.bag`` / ``liteseg_ros.image_codec``.

* **Distributed**: when ``WORLD_SIZE`` > 1 (set by ``torchrun`` / ``python -m torch.distributed.run``)
  the process group is initialised from RANK / WORLD_SIZE / LOCAL_RANK (nccl on CUDA, gloo on CPU),
  the model is wrapped in DistributedDataParallel (optionally with SyncBatchNorm), and each rank reads
  its shard through a DistributedSampler. ``batch_size`` is per process.
* **Schedule**: the LR is a pure function of the optimizer step (poly / cyclic / constant, optional
  warm-up) driven by LambdaLR, so a resumed run continues the exact same curve.
* **Determinism**: the model is initialised from ``seed``; the shuffle order depends on (seed, epoch);
  each sample's augmentation on (seed, epoch, index). A resumed CPU run replays the uninterrupted one.
* **Outputs** in ``out_dir``: ``config.yaml``, ``metrics.csv`` (epoch, step, loss, lr, miou, ...),
  ``checkpoints/{last,best,epoch_NNN}.pt`` (``liteseg_ros.model.save_checkpoint`` with class table,
  normalisation and train size; ``extra`` holds optimizer / scheduler / scaler / step / RNG state for
  ``resume``), ``summary.json`` and ``loss.png`` / ``miou.png`` / ``lr.png`` when matplotlib is present.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from liteseg_ros import safe_files
from liteseg_ros.classes import CITYSCAPES_CLASSES, IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD
from liteseg_ros.train.config import TrainConfig
from liteseg_ros.train.datasets import EvalTransform, SegDataset, TrainTransform, open_dataset
from liteseg_ros.train.evaluate import resolve_device, validate

#: last.pt is also written at the end of an epoch when this many seconds passed since the previous one.
LAST_EVERY_S = 300.0
CSV_FIELDS = ("epoch", "step", "loss", "lr", "miou", "pixel_acc", "category_miou", "it_per_s", "time_s")


# ----------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Read torchrun's env vars; initialise the default process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """RNG states as plain types (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), int(pos), int(has_gauss), float(gauss)))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based) of ``total_steps``."""
    floor = cfg.min_lr / cfg.lr
    if cfg.lr_schedule == "poly":
        f = max(0.0, 1.0 - step / max(1, total_steps)) ** cfg.poly_power
        f = floor + (1.0 - floor) * f
    elif cfg.lr_schedule == "cyclic":
        pos = step % (2 * cfg.cyclic_steps)
        tri = pos / cfg.cyclic_steps if pos < cfg.cyclic_steps else 2.0 - pos / cfg.cyclic_steps
        f = floor + (1.0 - floor) * tri
    else:
        f = 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f *= (step + 1) / cfg.warmup_steps
    return f


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW; no weight decay on BN / bias parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross entropy over labelled pixels (ignore 255); 0 (with a graph) when none is labelled.

    With ``weight`` (one per class) the mean is the weighted one (divided by the sum of the weights of
    the labelled pixels), so the loss scale, and with it the LR, stays comparable to the unweighted loss.
    """
    if not bool((target != IGNORE_LABEL).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_LABEL,
                           label_smoothing=label_smoothing)


def class_pixel_counts(ds: SegDataset, num_classes: int, max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, labelled pixels of the images containing it) over up to ``max_samples``
    evenly spaced labels.

    Reads the labels alone (``ds.load_label``: no image decoding), before augmentation: frequencies are a
    property of the data.
    """
    n = len(ds)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max_samples)).round().astype(int)) if n else []
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for i in idx:
        label = ds.load_label(int(i))
        counts = np.bincount(label.ravel(), minlength=256)[:num_classes]
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    return pixels, image_pixels


def class_weights_from_counts(pixels: np.ndarray, image_pixels: np.ndarray, method: str,
                              c: float = 1.02) -> np.ndarray:
    """Per-class loss weights from label statistics; classes never seen get weight 0 (they have no pixels).

    * ``enet`` (Paszke et al., ENet 2016; used by ERFNet on Cityscapes): ``1 / ln(c + p)`` with ``p``
      the class's share of all labelled pixels. Bounded by ``1 / ln(c)``, so rare classes get a large
      but finite boost.
    * ``median_freq`` (Eigen & Fergus 2015): ``median(f) / f`` with ``f`` = class pixels / labelled
      pixels of the images that contain the class. Unbounded: very rare classes can dominate.
    """
    pixels = pixels.astype(np.float64)
    seen = pixels > 0
    if not seen.any():
        raise ValueError("class_weights: the sampled labels contain no labelled pixel")
    weights = np.zeros_like(pixels)
    if method == "enet":
        weights[seen] = 1.0 / np.log(c + pixels[seen] / pixels.sum())
    elif method == "median_freq":
        freq = pixels[seen] / image_pixels[seen].astype(np.float64)
        weights[seen] = np.median(freq) / freq
    else:
        raise ValueError(f"class_weights: unknown method {method!r}")
    return weights


def resolve_class_weights(cfg: TrainConfig, ds: SegDataset, num_classes: int) -> np.ndarray | None:
    """The loss weights ``cfg.class_weights`` asks for (None: plain cross entropy)."""
    if cfg.class_weights is None:
        return None
    if isinstance(cfg.class_weights, str):
        pixels, image_pixels = class_pixel_counts(ds, num_classes, cfg.class_weight_samples)
        return class_weights_from_counts(pixels, image_pixels, cfg.class_weights, cfg.class_weight_c)
    weights = np.asarray(cfg.class_weights, dtype=np.float64)
    if weights.shape != (num_classes,):
        raise ValueError(f"class_weights: {weights.size} weights given for {num_classes} classes")
    return weights


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def build_datasets(cfg: TrainConfig) -> tuple[SegDataset, SegDataset | None]:
    """The training and (optional) validation datasets of ``cfg``."""
    train_tf = TrainTransform(cfg.crop_size, cfg.scale_range, cfg.crop_mode, cfg.hflip, cfg.rotate_deg)
    val_tf = EvalTransform(cfg.val_size)
    if cfg.dataset == "synthetic":
        weather = cfg.synthetic_weather
        train = open_dataset("synthetic", None, None, train_tf, cfg.seed, num_samples=cfg.synthetic_train,
                             first_seed=0, size=cfg.synthetic_size, weather=weather,
                             density=cfg.synthetic_density)
        val = None
        if cfg.val_split and cfg.val_every and cfg.synthetic_val > 0:
            val = open_dataset("synthetic", None, None, val_tf, cfg.seed, num_samples=cfg.synthetic_val,
                               first_seed=cfg.synthetic_train, size=cfg.synthetic_size, weather=weather)
        return train, val
    train = open_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, train_tf, cfg.seed, coarse=cfg.coarse)
    val = None
    if cfg.val_split and cfg.val_every:
        val = open_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, val_tf, cfg.seed)
    return train, val


def _worker_init(_: int) -> None:
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover
        pass
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _meta(cfg: TrainConfig, classes: Any, miou: float | None) -> Any:
    from liteseg_ros.model import CheckpointMeta

    notes = cfg.notes or f"trained with liteseg_ros.train on {cfg.dataset}"
    if miou is not None and not math.isnan(miou):
        notes += f"; val mIoU {100 * miou:.2f}%"
    return CheckpointMeta(backbone=cfg.backbone, num_classes=len(classes), classes=classes,
                          mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD),
                          train_size=tuple(cfg.crop_size), model_name=cfg.model_name, notes=notes)


@dataclass
class TrainResult:
    out_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_miou: float
    steps: int
    seconds: float
    it_per_s: float


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Run the training described by ``cfg``; returns paths and numbers (rank 0's view)."""
    cfg.validate()
    info = setup_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo) -> TrainResult:
    """The run in the four steps of torchvision's reference scripts: build, resume, then per epoch
    one pass over the data followed by validation and checkpoints."""
    t_start = time.perf_counter()
    run = _build(cfg, info, t_start)
    if cfg.resume:
        _resume(run)
    run.start_log()
    for epoch in range(run.step // run.steps_per_epoch, cfg.epochs):
        if run.step >= run.total_steps:
            break
        _train_one_epoch(run, epoch)
        if _validate_and_save(run, epoch):
            break
    return _finish(run)


@dataclass
class _Run:
    """One training run's parts and progress: what the steps share, and what a checkpoint restores.

    Built by :func:`_build`, moved forward by :func:`_train_one_epoch`; ``step``, ``best_miou`` and
    ``history`` together with the optimizer, scheduler and scaler are the state ``resume`` brings back.
    """

    cfg: TrainConfig
    info: DistInfo
    t_start: float
    out_dir: Path
    ckpt_dir: Path
    classes: Any
    train_ds: SegDataset
    val_ds: SegDataset | None
    model: nn.Module
    sampler: DistributedSampler
    loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    loss_weight: torch.Tensor | None
    step: int = 0
    best_miou: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    bar: Any = None
    last_path: Path | None = None
    best_path: Path | None = None
    run_steps: int = 0       #: optimizer steps taken by this process (not counting resumed ones)
    run_time: float = 0.0    #: seconds spent in those steps (for it/s)
    t_last: float = 0.0      #: when last.pt was last written

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "metrics.csv"

    def start_log(self) -> None:
        """metrics.csv from the history so far (rows after a resumed step dropped), the progress bar,
        and the best.pt a resumed run already has."""
        if self.info.is_main:
            self.history = [r for r in self.history if int(r["step"]) <= self.step]
            self._write_csv()
            if self.cfg.progress:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total_steps, initial=self.step, unit="it", dynamic_ncols=True,
                                desc="train")
        best = self.ckpt_dir / "best.pt"
        self.best_path = best if best.exists() and self.cfg.resume else None
        self.t_last = time.perf_counter()

    def log_row(self, row: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        full = {k: row.get(k, "") for k in CSV_FIELDS}
        self.history.append(full)
        # Appending is the one write into an existing file: only to a plain file of ours (one link, our
        # uid); anything else found there (a planted link) is removed and the whole log written afresh.
        f = safe_files.open_own_for_append(self.csv_path)
        if f is None:
            self._write_csv()
            return
        with io.TextIOWrapper(f, encoding="utf-8", newline="") as text:
            csv.DictWriter(text, fieldnames=CSV_FIELDS).writerow(full)

    def _write_csv(self) -> None:
        """metrics.csv from the history, as a fresh file renamed into place."""
        with safe_files.fresh_file(self.csv_path, "w", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(self.history)

    def say(self, msg: str) -> None:
        if self.info.is_main:
            (self.bar.write if self.bar is not None else print)(msg)

    def save(self, name: str, epoch: int, miou: float | None) -> Path:
        from liteseg_ros.model import save_checkpoint

        path = self.ckpt_dir / name
        extra = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": epoch, "step": self.step, "total_steps": self.total_steps,
            "best_miou": self.best_miou, "rng": rng_state(), "config": self.cfg.to_dict(), "history": self.history,
        }
        save_checkpoint(_unwrap(self.model), path, _meta(self.cfg, self.classes, miou), extra=extra)
        return path


def _build(cfg: TrainConfig, info: DistInfo, t_start: float) -> _Run:
    """Seeds, output folder, datasets, model (DDP-wrapped when distributed), loader and optimisation."""
    device = info.device
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        safe_files.write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    train_ds, val_ds = build_datasets(cfg)
    for ds in (train_ds, val_ds):
        if hasattr(ds, "materialize"):  # synthetic scenes: render once, augment every epoch
            ds.materialize(progress=info.is_main and cfg.progress)
    classes = train_ds.classes
    if val_ds is not None and tuple(val_ds.classes.names) != tuple(classes.names):
        raise ValueError("training and validation datasets have different class lists")
    model = _build_model(cfg, info, len(classes))

    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda",
                        worker_init_fn=_worker_init if cfg.num_workers > 0 else None)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_ds)} training samples over {info.world_size} process(es) do not fill "
                         f"one batch of {cfg.batch_size}: lower batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
    use_amp = cfg.amp and device.type == "cuda"
    class_weights = resolve_class_weights(cfg, train_ds, len(classes))
    warning = cfg.held_out_warning()
    if warning and info.is_main:
        print(warning)
    loss_weight = None
    if class_weights is not None:
        loss_weight = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
        if info.is_main:
            print("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(classes.names, class_weights)))
            safe_files.write_text(out_dir / "class_weights.json", json.dumps(
                dict(zip(classes.names, [round(float(w), 6) for w in class_weights])), indent=1) + "\n")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return _Run(cfg, info, t_start, out_dir, ckpt_dir, classes, train_ds, val_ds, model, sampler, loader,
                steps_per_epoch, total_steps, optimizer, scheduler, scaler, use_amp, loss_weight)


def _build_model(cfg: TrainConfig, info: DistInfo, num_classes: int) -> nn.Module:
    """LiteSeg with its encoder / init weights, on the device; the same init on every rank (seeded
    before, and DDP broadcasts rank 0's weights)."""
    from liteseg_ros.model import LiteSeg, load_checkpoint, load_encoder_weights

    device = info.device
    model = LiteSeg(backbone=cfg.backbone, num_classes=num_classes)
    if cfg.encoder_weights:
        from liteseg_ros import weights

        # 'imagenet' -> torchvision's hash-checked download in torch's hub cache; the file is then read
        # like any local encoder file (weights_only, strict key check).
        enc = weights.encoder_file(cfg.encoder_weights, cfg.backbone, progress=info.is_main and cfg.progress,
                                   log=print if info.is_main else (lambda m: None))
        load_encoder_weights(model, enc)
    if cfg.init_weights:
        src = load_checkpoint(cfg.init_weights, map_location="cpu")
        src_sd = src.state_dict()
        own = model.state_dict()
        bad = [k for k in src_sd if k in own and src_sd[k].shape != own[k].shape]
        model.load_state_dict({k: v for k, v in src_sd.items() if k not in bad}, strict=False)
        if info.is_main and bad:
            print(f"init_weights: skipped {len(bad)} tensors of another shape (e.g. {bad[0]})")
    model.to(device)
    if info.distributed and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif info.is_main:
            print("sync_bn: SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _resume(run: _Run) -> None:
    """Weights, optimizer, scheduler, scaler, step, best mIoU, history and RNG from ``cfg.resume``."""
    from liteseg_ros.model import load_checkpoint, read_extra

    cfg, info = run.cfg, run.info
    extra = read_extra(cfg.resume, map_location="cpu")
    if "optimizer" not in extra:
        raise ValueError(f"resume: {cfg.resume} holds no training state (optimizer/step); "
                         "use init_weights to start from its weights instead")
    resumed = load_checkpoint(cfg.resume, map_location="cpu")
    _unwrap(run.model).load_state_dict(resumed.state_dict())
    run.optimizer.load_state_dict(extra["optimizer"])
    run.scheduler.load_state_dict(extra["scheduler"])
    run.scaler.load_state_dict(extra["scaler"])
    run.step = int(extra["step"])
    run.best_miou = float(extra.get("best_miou", float("nan")))
    run.history = list(extra.get("history", []))
    if "rng" in extra:
        set_rng_state(extra["rng"])
    if extra.get("total_steps") not in (None, run.total_steps) and info.is_main:
        print(f"resume: total steps changed {extra['total_steps']} -> {run.total_steps}; "
              "the LR schedule follows the new total")
    if info.is_main:
        print(f"resumed from {cfg.resume} at step {run.step}")


def _train_one_epoch(run: _Run, epoch: int) -> None:
    """One pass over the training data (or what is left of it after a mid-epoch resume, or before
    ``max_steps``), logging the mean loss every ``log_every`` steps."""
    cfg, device = run.cfg, run.info.device
    run.model.train()
    run.train_ds.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    skip = run.step - epoch * run.steps_per_epoch  # batches already done in this epoch (resume mid-epoch)
    win_loss, win_n, t_win = 0.0, 0, time.perf_counter()
    for i, (images, targets) in enumerate(run.loader):
        if i < skip:
            continue
        if run.step >= run.total_steps:
            break
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=run.use_amp):
            logits = run.model(images)
        loss = segmentation_loss(logits, targets, cfg.label_smoothing, run.loss_weight)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        lr_used = run.optimizer.param_groups[0]["lr"]
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.step += 1
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss is {loss_v} at step {run.step}: lower lr or enable grad_clip")
        win_loss += loss_v
        win_n += 1
        run.run_steps += 1
        run.run_time += time.perf_counter() - t0
        if run.bar is not None:
            run.bar.update(1)
            run.bar.set_postfix(epoch=epoch, loss=f"{loss_v:.4f}", lr=f"{lr_used:.2e}")
        if run.step % cfg.log_every == 0 or run.step == run.total_steps:
            dt = time.perf_counter() - t_win
            run.log_row({"epoch": epoch, "step": run.step, "loss": f"{win_loss / win_n:.6f}", "lr": f"{lr_used:.8g}",
                         "it_per_s": f"{win_n / dt:.3f}", "time_s": f"{time.perf_counter() - run.t_start:.1f}"})
            win_loss, win_n, t_win = 0.0, 0, time.perf_counter()


def _validate_and_save(run: _Run, epoch: int) -> bool:
    """After an epoch's pass: validate when due, write best.pt / epoch_NNN.pt / last.pt (rank 0), wait
    for every rank; True when the run has taken all its steps."""
    cfg, info = run.cfg, run.info
    epoch_done = run.step >= (epoch + 1) * run.steps_per_epoch
    finished = run.step >= run.total_steps
    next_epoch = epoch + 1 if epoch_done else epoch
    miou = None
    if run.val_ds is not None and cfg.val_every and ((epoch + 1) % cfg.val_every == 0 or finished):
        shard = Subset(run.val_ds, list(range(info.rank, len(run.val_ds), info.world_size)))
        metrics = validate(_unwrap(run.model), shard, len(run.classes), info.device, run.classes.names,
                           categories=_categories(run.classes.names), amp=run.use_amp,
                           num_workers=min(cfg.num_workers, 2))
        miou = metrics.miou
        run.log_row({"epoch": epoch, "step": run.step, "miou": f"{miou:.6f}", "pixel_acc": f"{metrics.pixel_acc:.6f}",
                     "category_miou": "" if math.isnan(metrics.category_miou) else f"{metrics.category_miou:.6f}",
                     "time_s": f"{time.perf_counter() - run.t_start:.1f}"})
        run.say(f"epoch {epoch}: val mIoU {100 * miou:.2f}%  pixel acc {100 * metrics.pixel_acc:.2f}%")
        if not math.isnan(miou) and (math.isnan(run.best_miou) or miou > run.best_miou):
            run.best_miou = miou
            if info.is_main:
                run.best_path = run.save("best.pt", next_epoch, miou)
    if info.is_main:
        numbered = bool(cfg.checkpoint_every and epoch_done and (epoch + 1) % cfg.checkpoint_every == 0)
        if numbered:
            run.save(f"epoch_{epoch + 1:03d}.pt", next_epoch, miou)
        # last.pt: at numbered checkpoints, at the end, and at least every LAST_EVERY_S seconds
        if numbered or finished or epoch + 1 >= cfg.epochs or time.perf_counter() - run.t_last >= LAST_EVERY_S:
            run.last_path = run.save("last.pt", next_epoch, miou)
            run.t_last = time.perf_counter()
    if info.distributed:
        dist.barrier()
    return finished


def _finish(run: _Run) -> TrainResult:
    """Close the bar, write summary.json and the plots (rank 0); the numbers for the caller."""
    cfg, info = run.cfg, run.info
    if run.bar is not None:
        run.bar.close()
    seconds = time.perf_counter() - run.t_start
    it_s = run.run_steps / run.run_time if run.run_time > 0 else float("nan")
    if info.is_main:
        summary = {"steps": run.step, "total_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
                   "world_size": info.world_size, "best_miou": None if math.isnan(run.best_miou) else run.best_miou,
                   "seconds": seconds, "train_it_per_s": it_s,
                   "images_per_s": it_s * cfg.batch_size * info.world_size,
                   "last_checkpoint": str(run.last_path) if run.last_path else None,
                   "best_checkpoint": str(run.best_path) if run.best_path else None}
        safe_files.write_text(run.out_dir / "summary.json", json.dumps(summary, indent=2))
        if cfg.plots:
            write_plots(run.history, run.out_dir)
    return TrainResult(run.out_dir, run.last_path, run.best_path, run.best_miou, run.step, seconds, it_s)


def _categories(names: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    from liteseg_ros.classes import CITYSCAPES_CATEGORIES

    return dict(CITYSCAPES_CATEGORIES) if tuple(names) == CITYSCAPES_CLASSES else None


def write_plots(history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """loss.png, lr.png (per logged step) and miou.png (per validation) from the CSV rows; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots written")
        return []

    def series(key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for r in history:
            if r.get(key) not in ("", None):
                xs.append(int(r["step"]))
                ys.append(float(r[key]))
        return xs, ys

    written = []
    for key, title, fname, logy in (("loss", "training loss", "loss.png", True),
                                    ("lr", "learning rate", "lr.png", False),
                                    ("miou", "validation mIoU", "miou.png", False)):
        xs, ys = series(key)
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        if logy and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / fname
        with safe_files.fresh_file(path) as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        written.append(path)
    return written
