"""Class table, palette, mask groups and the Cityscapes label conversions."""
from __future__ import annotations

import numpy as np
import pytest

from liteseg_ros.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    ClassTable,
    UnknownClassError,
    label_id_to_train_id_lut,
    train_id_to_label_id_lut,
)


def test_cityscapes_table_matches_the_official_ids():
    lut = label_id_to_train_id_lut()
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[0] == 255 and lut[9] == 255
    evaluated = [lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255]
    assert [lab.train_id for lab in evaluated] == list(range(19))
    assert [lab.name.replace(" ", "_") for lab in evaluated] == list(CITYSCAPES_CLASSES)
    back = train_id_to_label_id_lut()
    assert all(lut[back[t]] == t for t in range(19))


def test_palette_lut_and_groups():
    t = ClassTable.cityscapes()
    lut = t.palette_lut()
    assert tuple(lut[0]) == (128, 64, 128) and tuple(lut[255]) == (0, 0, 0)
    assert tuple(t.palette_lut(bgr=True)[0]) == (128, 64, 128)[::-1]
    groups = t.resolve_groups({"drivable": ["road"], "vehicles": ["car", "bus", "car"]})
    assert groups == {"drivable": (0,), "vehicles": (13, 15)}
    g = t.group_lut(groups["vehicles"])
    assert g[13] == 255 and g[15] == 255 and g[0] == 0 and g[255] == 0


def test_unknown_class_lists_valid_names():
    with pytest.raises(UnknownClassError, match="mask_groups.x: unknown class name 'lava'.*road, sidewalk"):
        ClassTable.cityscapes().resolve_groups({"x": ["lava"]})


@pytest.mark.parametrize("names,colors,fragment", [
    ((), (), "at least one"),
    (("a", "a"), ((0, 0, 0), (1, 1, 1)), "duplicate"),
    (("a",), ((0, 0, 0), (1, 1, 1)), "colours"),
    (("a",), ((0, 0, 300),), "0..255"),
])
def test_bad_tables(names, colors, fragment):
    with pytest.raises(ValueError, match=fragment):
        ClassTable(names, colors)


def test_round_trip_and_generic():
    t = ClassTable(("floor", "wall"), ((1, 2, 3), (4, 5, 6)))
    assert ClassTable.from_dict(t.to_dict()) == t
    g = ClassTable.generic(5)
    assert len(g) == 5 and g == ClassTable.generic(5)
    assert ClassTable.generic(19) == ClassTable.cityscapes()
    assert t.flat_colors() == [1, 2, 3, 4, 5, 6]
    assert np.asarray(g.colors).shape == (5, 3)
