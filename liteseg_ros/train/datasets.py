"""Segmentation datasets for training and evaluation: Cityscapes, a plain image/label folder, synthetic scenes.

Ring 4 (faces): imports numpy, OpenCV, torch, yaml and ``liteseg_ros.classes`` / ``liteseg_ros.synthetic``;
never rclpy, message packages or ``liteseg_ros.node`` / ``liteseg_ros.bag`` / ``liteseg_ros.image_codec``.

Every dataset yields ``(image, label)`` where the image is a float32 tensor (3, H, W), RGB, normalised
with the ImageNet mean/std, and the label an int64 tensor (H, W) of class ids with 255 = ignore.

Layouts:

* **Cityscapes**: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
  ``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (or ``gtCoarse/.../*_gtCoarse_labelIds.png`` with
  ``coarse=True``). labelIds are mapped to the 19 trainIds by the official table; void -> 255.
* **Folder**: ``images/`` + ``labels/`` (single-channel PNGs of class ids, same stems) and a
  ``classes.yaml`` beside them; splits as ``{root}/{split}/images`` or ``{root}/images/{split}``.
* **Synthetic**: ``liteseg_ros.synthetic.generate_scene`` over a range of seeds (exact labels, no files).

Augmentation (``TrainTransform``), the paper's recipe: random horizontal flip -> random scale of the
full image -> optional small rotation (label 255 where rotated in) -> random crop. When the scaled image is
smaller than the crop, ``crop_mode="pad"`` (default) pads it (image with the mean colour, i.e. 0 after
normalisation; label 255) so the aspect ratio and scale stay as drawn; ``crop_mode="resize"`` resizes it
up to the crop as the official code did (which distorts the aspect ratio and over-samples that scale).
Random numbers come from ``(seed, epoch, index)``, so a sample's augmentation does not depend on the
number of DataLoader workers or processes, and a resumed run replays the same data.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from liteseg_ros.classes import (
    CITYSCAPES_LABELS,
    IGNORE_LABEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassTable,
    label_id_to_train_id_lut,
)
from liteseg_ros.defaults import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """A dataset problem; the message names the offending path."""


# ----------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------
def normalize(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 tensor (3, H, W) normalised with mean/std on [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


class TrainTransform:
    """Random flip, scale, rotation and crop of an (RGB uint8, label uint8) pair, then normalise."""

    def __init__(self, crop_size: tuple[int, int], scale_range: tuple[float, float] = (0.35, 1.0),
                 crop_mode: str = "pad", hflip: bool = True, rotate_deg: float = 0.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if crop_mode not in ("pad", "resize"):
            raise ValueError(f"crop_mode={crop_mode!r}: must be 'pad' or 'resize'")
        self.crop_h, self.crop_w = int(crop_size[0]), int(crop_size[1])
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.crop_mode = crop_mode
        self.hflip = hflip
        self.rotate_deg = float(rotate_deg)
        self.mean, self.std = tuple(mean), tuple(std)
        self._fill = tuple(int(round(v * 255)) for v in self.mean)

    def __call__(self, rgb: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hflip and rng.random() < 0.5:
            rgb, label = rgb[:, ::-1], label[:, ::-1]
        s = rng.uniform(*self.scale_range)
        h, w = label.shape
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (nh, nw) != (h, w):
            rgb = cv2.resize(np.ascontiguousarray(rgb), (nw, nh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(np.ascontiguousarray(label), (nw, nh), interpolation=cv2.INTER_NEAREST)
        if self.rotate_deg > 0:
            angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
            m = cv2.getRotationMatrix2D((nw / 2.0, nh / 2.0), angle, 1.0)
            rgb = cv2.warpAffine(np.ascontiguousarray(rgb), m, (nw, nh), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=self._fill)
            label = cv2.warpAffine(np.ascontiguousarray(label), m, (nw, nh), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_LABEL)
        ch, cw = self.crop_h, self.crop_w
        if nh < ch or nw < cw:
            if self.crop_mode == "resize":
                rgb = cv2.resize(np.ascontiguousarray(rgb), (max(nw, cw), max(nh, ch)),
                                 interpolation=cv2.INTER_LINEAR)
                label = cv2.resize(np.ascontiguousarray(label), (max(nw, cw), max(nh, ch)),
                                   interpolation=cv2.INTER_NEAREST)
            else:
                ph, pw = max(ch - nh, 0), max(cw - nw, 0)
                top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
                rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb), top, ph - top, left, pw - left,
                                         cv2.BORDER_CONSTANT, value=self._fill)
                label = cv2.copyMakeBorder(np.ascontiguousarray(label), top, ph - top, left, pw - left,
                                           cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
            nh, nw = label.shape
        y0 = int(rng.integers(0, nh - ch + 1))
        x0 = int(rng.integers(0, nw - cw + 1))
        rgb = rgb[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        return normalize(rgb, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(label)).long()


class EvalTransform:
    """Resize the image to ``size`` (H, W) if given (bilinear), normalise; the label keeps its full size."""

    def __init__(self, size: tuple[int, int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.size = (int(size[0]), int(size[1])) if size else None
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, rgb: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size is not None and rgb.shape[:2] != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return normalize(rgb, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(label)).long()


# ----------------------------------------------------------------------------------------------
# file helpers
# ----------------------------------------------------------------------------------------------
def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); grey and RGBA inputs are converted."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel 8-bit label PNG; colour or 16-bit files raise DatasetError naming the path."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DatasetError(f"cannot read label {path}")
    if lab.ndim != 2:
        raise DatasetError(f"label {path} has {lab.shape[2]} channels; expected a single-channel PNG of ids")
    if lab.dtype != np.uint8:
        raise DatasetError(f"label {path} is {lab.dtype}; expected 8-bit ids")
    return lab


def check_label_values(label: np.ndarray, num_valid: int, path: Path, what: str = "class ids") -> None:
    """Raise DatasetError if ``label`` holds values outside 0..num_valid-1 and 255."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[IGNORE_LABEL] = 0
    bad = np.flatnonzero(counts[num_valid:])
    if bad.size:
        vals = (bad + num_valid).tolist()
        raise DatasetError(f"label {path} holds values {vals[:10]} outside the {what} 0..{num_valid - 1} "
                           f"(and {IGNORE_LABEL} = ignore)")


def load_class_table(path: str | Path) -> ClassTable:
    """Read ``classes.yaml``: a list of names, a list of ``{name, color}``, or ``{names: [...], colors: [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class list not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: invalid YAML: {exc}") from None
    names: list[str]
    colors: list[Any] | None = None
    if isinstance(data, dict) and "names" in data:
        names = list(data["names"])
        colors = data.get("colors")
    elif isinstance(data, dict) and "classes" in data:
        return load_class_table_from_list(data["classes"], path)
    elif isinstance(data, list):
        return load_class_table_from_list(data, path)
    else:
        raise DatasetError(f"{path}: expected a list of class names or a mapping with 'names'")
    return _make_table(names, colors, path)


def load_class_table_from_list(items: list[Any], path: Path) -> ClassTable:
    names, colors = [], []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if "name" not in item:
                raise DatasetError(f"{path}: entry {i} has no 'name'")
            names.append(str(item["name"]))
            colors.append(item.get("color"))
        else:
            names.append(str(item))
            colors.append(None)
    return _make_table(names, colors if any(c is not None for c in colors) else None, path)


def _make_table(names: list[str], colors: list[Any] | None, path: Path) -> ClassTable:
    generic = ClassTable.generic(len(names))
    if colors is None:
        colors = list(generic.colors)
    elif len(colors) != len(names):
        raise DatasetError(f"{path}: {len(names)} class names but {len(colors)} colours")
    colors = [generic.colors[i] if c is None else c for i, c in enumerate(colors)]
    try:
        return ClassTable(tuple(names), tuple(tuple(c) for c in colors))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
class SegDataset(Dataset):
    """Base: subclasses implement ``__len__``, ``load(i) -> (rgb, label)`` and ``name(i)``."""

    classes: ClassTable

    def __init__(self, transform: Any = None, seed: int = 0) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random augmentation (call before creating the DataLoader iterator)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """The label of ``load(index)`` alone (class statistics need no image); file datasets skip the image."""
        return self.load(index)[1]

    def name(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, label = self.load(index)
        if self.transform is None:
            return normalize(rgb), torch.from_numpy(label).long()
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.transform(rgb, label, rng)


class FilePairDataset(SegDataset):
    """(image file, label file) pairs: the listing and loading Cityscapes and folder datasets share."""

    items: list[tuple[Path, Path]]

    def _pair(self, images: Iterable[Path], label_of: Callable[[Path], Path], none_found: str) -> None:
        """Fill ``items``; an image without its label file, or no image at all, is a DatasetError."""
        self.items = []
        for img in images:
            lab = label_of(img)
            if not lab.is_file():
                raise DatasetError(f"image {img} has no label: expected {lab}")
            self.items.append((img, lab))
        if not self.items:
            raise DatasetError(none_found)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
        """RGB image and raw label of one pair (same size, checked), plus the label's path for messages."""
        img_path, lab_path = self.items[index]
        rgb = read_rgb(img_path)
        lab = read_label(lab_path)
        if lab.shape != rgb.shape[:2]:
            raise DatasetError(f"label {lab_path} is {lab.shape[1]}x{lab.shape[0]} but image {img_path} is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}")
        return rgb, lab, lab_path

    def _label(self, raw: np.ndarray, path: Path) -> np.ndarray:  # pragma: no cover - abstract
        """Check a raw label file's values and convert them to the dataset's class ids."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, lab, lab_path = self._read(index)
        return rgb, self._label(lab, lab_path)

    def load_label(self, index: int) -> np.ndarray:
        lab_path = self.items[index][1]
        return self._label(read_label(lab_path), lab_path)


class CityscapesDataset(FilePairDataset):
    """Cityscapes fine (or coarse) annotations, labelIds converted to the 19 trainIds (void -> 255)."""

    def __init__(self, root: str | Path, split: str = "train", coarse: bool = False,
                 transform: Any = None, seed: int = 0, check_values: bool = True) -> None:
        super().__init__(transform, seed)
        self.root = Path(root)
        self.split = split
        self.coarse = coarse
        self.classes = ClassTable.cityscapes()
        self.check_values = check_values
        self._lut = label_id_to_train_id_lut()
        self._num_label_ids = max(lab.id for lab in CITYSCAPES_LABELS) + 1
        gt = "gtCoarse" if coarse else "gtFine"
        img_dir = self.root / "leftImg8bit" / split
        gt_dir = self.root / gt / split
        if not img_dir.is_dir():
            raise DatasetError(f"Cityscapes split {split!r} not found: {img_dir} is not a directory")
        if not gt_dir.is_dir():
            raise DatasetError(f"Cityscapes split {split!r} has no labels: {gt_dir} is not a directory")
        suffix = "_leftImg8bit.png"
        self._pair(sorted(img_dir.glob(f"*/*{suffix}")),
                   lambda img: gt_dir / img.parent.name / f"{img.name[: -len(suffix)]}_{gt}_labelIds.png",
                   f"no images matching {img_dir}/*/*{suffix}")

    def name(self, index: int) -> str:
        return self.items[index][0].name[: -len("_leftImg8bit.png")]

    def _label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if self.check_values:
            check_label_values(raw, self._num_label_ids, path, "Cityscapes labelIds")
        return self._lut[raw]


class FolderDataset(FilePairDataset):
    """``images/*.{png,jpg}`` + ``labels/<stem>.png`` (class ids, 255 = ignore) + ``classes.yaml``."""

    def __init__(self, root: str | Path, split: str | None = None, transform: Any = None, seed: int = 0,
                 classes: ClassTable | None = None, check_values: bool = True) -> None:
        super().__init__(transform, seed)
        self.root = Path(root)
        self.split = split
        self.check_values = check_values
        if split:
            candidates = [(self.root / split / "images", self.root / split / "labels"),
                          (self.root / "images" / split, self.root / "labels" / split)]
        else:
            candidates = [(self.root / "images", self.root / "labels")]
        found = next((c for c in candidates if c[0].is_dir()), None)
        if found is None:
            looked = " or ".join(str(c[0]) for c in candidates)
            what = f"split {split!r}" if split else "image folder"
            raise DatasetError(f"{what} not found: looked for {looked}")
        img_dir, lab_dir = found
        if not lab_dir.is_dir():
            raise DatasetError(f"label folder not found: {lab_dir} (next to {img_dir})")
        if classes is None:
            yaml_path = next((p for p in (img_dir.parent / "classes.yaml", self.root / "classes.yaml")
                              if p.is_file()), self.root / "classes.yaml")
            classes = load_class_table(yaml_path)
        self.classes = classes
        self._pair(sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                   lambda img: lab_dir / f"{img.stem}.png",
                   f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")

    def name(self, index: int) -> str:
        return self.items[index][0].stem

    def _label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if self.check_values:
            check_label_values(raw, len(self.classes), path, f"{len(self.classes)} classes")
        return raw


class SyntheticDataset(SegDataset):
    """Procedural street scenes with exact Cityscapes trainId labels, one per seed (no files).

    ``density`` scales how many of each kind of thing a scene holds (``SceneConfig`` multipliers): training
    on more cyclists or people than the default world is how rare classes (rider, motorcycle: under 0.2 % of
    default pixels) get enough examples, while validation and held-out scores stay on the default world.
    """

    def __init__(self, num_samples: int, first_seed: int = 0, size: tuple[int, int] = (180, 320),
                 weather: str | None = "random", transform: Any = None, seed: int = 0,
                 cache: bool = True, density: dict[str, float] | None = None) -> None:
        super().__init__(transform, seed)
        from liteseg_ros import synthetic  # late: the generator is only needed here

        self._synthetic = synthetic
        self.num_samples = int(num_samples)
        self.first_seed = int(first_seed)
        self.size = (int(size[0]), int(size[1]))
        self.weather = weather
        self.density = dict(density or {})  # SceneConfig multipliers: cars, people, cyclists, poles, ...
        self.classes = ClassTable.cityscapes()
        self._scene_config = self._config()  # validates size and weather now, not in a worker
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def materialize(self, progress: bool = False) -> SyntheticDataset:
        """Generate every scene now (so forked DataLoader workers share them instead of re-rendering)."""
        it = range(self.num_samples)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="generating scenes", unit="scene", dynamic_ncols=True)
        for i in it:
            self.load(i)
        return self

    def __len__(self) -> int:
        return self.num_samples

    def name(self, index: int) -> str:
        return f"synthetic_{self.first_seed + index:06d}"

    def _config(self) -> Any:
        kwargs: dict[str, Any] = {"height": self.size[0], "width": self.size[1], **self.density}
        if self.weather:
            kwargs["weather"] = self.weather
        return self._synthetic.SceneConfig(**kwargs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        seed = self.first_seed + int(index)
        sample = self._synthetic.generate_scene(seed, self._scene_config)
        rgb = cv2.cvtColor(np.ascontiguousarray(sample.image), cv2.COLOR_BGR2RGB)
        out = rgb, np.ascontiguousarray(sample.label, dtype=np.uint8)
        if self._cache is not None:
            self._cache[index] = out
        return out


def detect_layout(root: str | Path) -> str:
    """'cityscapes' if ``root/leftImg8bit`` exists, else 'folder'."""
    return "cityscapes" if (Path(root) / "leftImg8bit").is_dir() else "folder"


def open_dataset(kind: str, root: str | Path | None, split: str | None, transform: Any = None, seed: int = 0,
                 coarse: bool = False, **synthetic_kwargs: Any) -> SegDataset:
    """Open one split of a dataset of ``kind`` (cityscapes | folder | synthetic | auto)."""
    if kind == "synthetic":
        return SyntheticDataset(transform=transform, seed=seed, **synthetic_kwargs)
    if root is None:
        raise DatasetError(f"dataset {kind!r} needs a data directory")
    if not Path(root).is_dir():
        raise DatasetError(f"data directory not found: {root}")
    if kind == "auto":
        kind = detect_layout(root)
    if kind == "cityscapes":
        return CityscapesDataset(root, split or "train", coarse=coarse, transform=transform, seed=seed)
    if kind == "folder":
        return FolderDataset(root, split, transform=transform, seed=seed)
    raise DatasetError(f"unknown dataset kind {kind!r}: cityscapes | folder | synthetic | auto")
