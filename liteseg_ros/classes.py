"""Class table, colour palette and mask groups: the one source of class names and colours.

Ring 0 (pure data): imports numpy only; never torch, rclpy or message packages, so the model,
training, bag tools and node all agree on what label ``13`` means without depending on each other.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Label value for "no class": Cityscapes void pixels, and pixels below ``confidence_threshold``.
IGNORE_LABEL = 255


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the official Cityscapes label table (cityscapesscripts ``labels.py``)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# The official table, written out from its definition: name, labelId, trainId, category,
# catId, hasInstances, ignoreInEval, colour. trainId 255 = void for training and evaluation.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in (
        ("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
        ("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
        ("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
        ("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
        ("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
        ("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
        ("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
        ("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
        ("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
        ("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
        ("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
        ("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
        ("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
        ("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
        ("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
        ("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
        ("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
        ("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
        ("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
        ("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
        ("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
        ("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
        ("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
        ("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
        ("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
        ("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
        ("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
        ("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
        ("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
        ("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
        ("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
        ("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
        ("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
        ("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
        ("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
    )
)

#: The 19 evaluated Cityscapes classes in trainId order (names use underscores: they are YAML keys).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

#: Palette of the official LiteSeg code (dataloaders/utils.py), RGB, trainId order. Note sky is
#: (0, 130, 180) there, not cityscapesscripts' (70, 130, 180); we follow the network's authors.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (0, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

#: Cityscapes categories over trainIds (for category mIoU).
CITYSCAPES_CATEGORIES: dict[str, tuple[int, ...]] = {
    "flat": (0, 1),
    "construction": (2, 3, 4),
    "object": (5, 6, 7),
    "nature": (8, 9),
    "sky": (10,),
    "human": (11, 12),
    "vehicle": (13, 14, 15, 16, 17, 18),
}

#: Default ``mask_groups`` of the node: one binary mask topic per group.
DEFAULT_MASK_GROUPS: dict[str, tuple[str, ...]] = {
    "drivable": ("road",),
    "walkable": ("sidewalk", "terrain"),
    "dynamic": ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
}

#: ImageNet normalisation the official network was trained with (RGB order, on [0, 1] input).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def label_id_to_train_id_lut() -> np.ndarray:
    """A 256-entry uint8 table mapping Cityscapes labelIds to trainIds (void and unknown -> 255)."""
    lut = np.full(256, IGNORE_LABEL, np.uint8)
    for lab in CITYSCAPES_LABELS:
        if 0 <= lab.id < 256 and 0 <= lab.train_id < 255:
            lut[lab.id] = lab.train_id
    return lut


def train_id_to_label_id_lut() -> np.ndarray:
    """A 256-entry uint8 table mapping trainIds back to labelIds (for the test server); 255 -> 0."""
    lut = np.zeros(256, np.uint8)
    for lab in CITYSCAPES_LABELS:
        if 0 <= lab.train_id < 255:
            lut[lab.train_id] = lab.id
    return lut


class UnknownClassError(ValueError):
    """A class name that is not in the model's class table (the message lists the valid ones)."""


@dataclass(frozen=True)
class ClassTable:
    """The classes a model predicts: names in label order, an RGB colour each, and the ignore label.

    Travels inside our checkpoints, is published on ``~/info``, and resolves ``mask_groups``.
    """

    names: tuple[str, ...] = CITYSCAPES_CLASSES
    colors: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE
    ignore_label: int = IGNORE_LABEL
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a class table needs at least one class")
        if len(self.names) >= self.ignore_label:
            raise ValueError(f"{len(self.names)} classes do not fit below ignore label {self.ignore_label}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate class names in {list(self.names)}")
        if len(self.colors) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        for c in self.colors:
            if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                raise ValueError(f"colour {c!r} is not an (r, g, b) triple of 0..255")
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in self.colors))
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def cityscapes(cls) -> ClassTable:
        return cls()

    @classmethod
    def generic(cls, num_classes: int) -> ClassTable:
        """Names ``class_0..`` and a deterministic palette, for custom models without metadata."""
        if num_classes == len(CITYSCAPES_CLASSES):
            return cls()
        rng = np.random.default_rng(num_classes)
        colors = tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(num_classes))
        return cls(tuple(f"class_{i}" for i in range(num_classes)), colors)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The label of ``name``; raises UnknownClassError naming the valid classes."""
        try:
            return self._index[name]
        except KeyError:
            raise UnknownClassError(
                f"unknown class name {name!r}; valid names: {', '.join(self.names)}"
            ) from None

    def palette_lut(self, bgr: bool = False) -> np.ndarray:
        """A (256, 3) uint8 colour table indexed by label; labels without a class are black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: len(self.colors)] = np.asarray(self.colors, np.uint8)
        return lut[:, ::-1].copy() if bgr else lut

    def flat_colors(self) -> list[int]:
        """Colours as r, g, b bytes per class (the SegmentationInfo ``colors`` field)."""
        return [v for c in self.colors for v in c]

    def resolve_groups(self, groups: Mapping[str, Iterable[str]]) -> dict[str, tuple[int, ...]]:
        """Group name -> sorted label ids; raises UnknownClassError / ValueError naming the key."""
        resolved: dict[str, tuple[int, ...]] = {}
        for group, names in groups.items():
            if not isinstance(group, str) or not group.isidentifier():
                raise ValueError(
                    f"mask group name {group!r} must be a plain identifier (it becomes a topic name)"
                )
            if isinstance(names, str):
                names = [names]
            ids: set[int] = set()
            for name in names:
                try:
                    ids.add(self.index(name))
                except UnknownClassError as exc:
                    raise UnknownClassError(f"mask_groups.{group}: {exc}") from None
            if not ids:
                raise ValueError(f"mask_groups.{group} names no class")
            resolved[group] = tuple(sorted(ids))
        return resolved

    def group_lut(self, ids: Sequence[int]) -> np.ndarray:
        """A 256-entry uint8 table giving 255 for labels in ``ids`` and 0 elsewhere (a mask via LUT)."""
        lut = np.zeros(256, np.uint8)
        lut[list(ids)] = 255
        return lut

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors],
                "ignore_label": self.ignore_label}

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassTable:
        return cls(tuple(d["names"]), tuple(tuple(c) for c in d["colors"]),
                   int(d.get("ignore_label", IGNORE_LABEL)))
