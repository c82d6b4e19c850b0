"""The parameter table: validation of values and params files, descriptors."""
from __future__ import annotations

from pathlib import Path

import pytest

from liteseg_ros import params
from liteseg_ros.classes import ClassTable


def test_defaults_validate():
    assert params.validate({}) == params.defaults()


@pytest.mark.parametrize("name,value,fragment", [
    ("overlay_alpha", 1.5, "out of range"),
    ("overlay_alpha", "x", "expected float"),
    ("backend", "tpu", "is not one of"),
    ("device", "gpu0", "does not match"),
    ("network_width", 8, "out of range"),
    ("network_widht", 640, "unknown parameter 'network_widht'"),
    ("mask_groups.drivable", ["road", "lava"], "unknown class name 'lava'"),
    ("mask_groups.bad-name", ["road"], "plain identifier"),
    ("mask_groups.empty", [], "names no class"),
])
def test_bad_values_name_the_key(name, value, fragment):
    with pytest.raises(params.ParameterError, match=fragment):
        params.check_value(name, value)


def test_ints_are_accepted_for_floats_and_builtins_pass():
    assert params.check_value("overlay_alpha", 1) == 1.0
    assert params.check_value("use_sim_time", True) is True
    assert params.check_value("qos_overrides./image.subscription.reliability", "reliable") == "reliable"


def test_params_file_merging_and_groups_replace_defaults(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    overlay_alpha: 0.2\n    mask_groups:\n      sky: [sky]\n"
                 "liteseg:\n  ros__parameters:\n    overlay_alpha: 0.3\nother:\n  ros__parameters:\n"
                 "    overlay_alpha: 0.9\n")
    values = params.validate(params.read_params_file(f))
    assert values["overlay_alpha"] == 0.3
    assert params.mask_groups_of(values) == {"sky": ["sky"]}


def test_pipeline_settings_are_typed_validated_and_gather_the_mask_groups(tmp_path):
    """One typed record per parameter map, with exactly the parameters' names, values and the groups as
    the map declares them (given groups replace the defaults), the same from a params file."""
    from dataclasses import fields

    from liteseg_ros.classes import DEFAULT_MASK_GROUPS
    from liteseg_ros.settings import PipelineSettings

    defaults = params.pipeline_settings({})
    names = [f.name for f in fields(PipelineSettings)]
    assert all(getattr(defaults, n) == params.defaults()[n] for n in names if n != "mask_groups")
    assert defaults.mask_groups == {g: tuple(c) for g, c in DEFAULT_MASK_GROUPS.items()}
    assert list(defaults.mask_groups) == list(DEFAULT_MASK_GROUPS)
    s = params.pipeline_settings({"network_width": 96, "network_height": 64, "overlay_alpha": 1,
                                  "mask_groups.sky": ["sky"], "mask_groups.built": ["building", "wall"]})
    assert (s.network_size, s.overlay_alpha, type(s.overlay_alpha)) == ((64, 96), 1.0, float)
    assert s.mask_groups == {"sky": ("sky",), "built": ("building", "wall")}
    f = tmp_path / "p.yaml"
    f.write_text("liteseg:\n  ros__parameters:\n    network_width: 96\n    network_height: 64\n    overlay_alpha: 1.0\n"
                 "    mask_groups:\n      sky: [sky]\n      built: [building, wall]\n")
    assert params.pipeline_settings(params.read_params_file(f)) == s
    with pytest.raises(params.ParameterError, match="overlay_alpha") as e:
        params.pipeline_settings({"overlay_alpha": 3.0, "mask_groups.x": ["lava"]})
    assert len(e.value.errors) == 2
    with pytest.raises(AttributeError):  # frozen: one record, read by everyone, changed by no one
        s.weights = "other"


def test_every_error_is_reported_at_once(tmp_path):
    with pytest.raises(params.ParameterError) as e:
        params.validate({"overlay_alpha": 3.0, "backend": "x", "typo": 1})
    assert all(k in str(e.value) for k in ("overlay_alpha", "backend", "typo"))


def test_malformed_params_files(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("liteseg: [1, 2\n")
    with pytest.raises(params.ParameterError, match="not valid YAML"):
        params.read_params_file(f)
    f.write_text("liteseg:\n  overlay_alpha: 1\n")
    with pytest.raises(params.ParameterError, match="ros__parameters"):
        params.read_params_file(f)
    with pytest.raises(params.ParameterError, match="does not exist"):
        params.read_params_file(tmp_path / "missing.yaml")


def test_groups_validate_against_a_custom_class_table():
    custom = ClassTable(("floor", "wall"), ((1, 2, 3), (4, 5, 6)))
    assert params.check_value("mask_groups.free", ["floor"], custom) == ["floor"]
    with pytest.raises(params.ParameterError, match="road"):
        params.check_value("mask_groups.free", ["road"], custom)


def test_descriptors_carry_ranges_and_read_only():
    from liteseg_ros.ros_params import descriptor  # the node turns the table into rcl descriptors

    d = descriptor(params.PARAMS_BY_NAME["overlay_alpha"])
    assert d.floating_point_range[0].to_value == 1.0 and not d.read_only
    d = descriptor(params.PARAMS_BY_NAME["network_width"])
    assert d.integer_range[0].from_value == 32 and d.read_only
    assert "stretch|letterbox" in descriptor(params.PARAMS_BY_NAME["resize_mode"]).description


def test_shipped_yaml_and_readme_list_exactly_the_parameter_table():
    repo = Path(__file__).resolve().parents[1]
    yaml_keys = params.yaml_keys(repo / "config" / "liteseg.yaml")
    table = set(params.PARAMS_BY_NAME)
    groups = {k for k in yaml_keys if k.startswith(params.MASK_GROUPS_PREFIX)}
    commented = {p.name for p in params.PARAMS if p.default == []}  # rcl cannot parse an empty list
    text = (repo / "config" / "liteseg.yaml").read_text()
    assert all(f"# {name}:" in text for name in commented)
    assert yaml_keys - groups == table - commented
    assert params.validate(params.read_params_file(repo / "config" / "liteseg.yaml")) == params.defaults()
    readme = (repo / "README.md").read_text()
    missing = [name for name in table if f"`{name}`" not in readme]
    assert not missing, f"README does not document {missing}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_for_every_float_parameter(value):
    """NaN passes a range check (every comparison is false); one rule refuses it for every float."""
    floats = [p.name for p in params.PARAMS if p.type_name == "float"]
    assert {"overlay_alpha", "confidence_threshold", "diagnostics_period", "batch_window_ms",
            "min_label_agreement"} <= set(floats)
    with pytest.raises(params.ParameterError) as exc:
        params.validate(dict.fromkeys(floats, value))
    assert len(exc.value.errors) == len(floats)
    assert all("is not a finite number" in e for e in exc.value.errors)
