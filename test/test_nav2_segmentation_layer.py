"""config/nav2_semantic_segmentation_layer.yaml against the node: what Nav2's semantic_segmentation_layer
(kiwicampus) needs from us, read the way the layer reads it.

The layer maps each LabelInfo class name to the costs of the class type that lists it; a name it does not
map is logged as "CRITICAL ERROR" and its pixels are skipped, and a name listed twice silently takes the first
type's costs. It pairs mask, confidence and point cloud by exact stamp, and reads one point per mask pixel.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from liteseg_ros import contract
from liteseg_ros.classes import ClassTable

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "nav2_semantic_segmentation_layer.yaml"
PLUGIN = "semantic_segmentation_layer::SemanticSegmentationLayer"
#: The parameters the layer declares per class type, with the type it declares them as (an int parameter
#: given as a float in YAML would stop the costmap at start-up).
CLASS_TYPE_PARAMS = {"classes": list, "base_cost": int, "max_cost": int, "mark_confidence": int,
                     "samples_to_max_cost": int, "dominant_priority": bool}


def layer_sources() -> list[dict]:
    costmap = yaml.safe_load(EXAMPLE.read_text())["local_costmap"]["local_costmap"]["ros__parameters"]
    layers = [costmap[name] for name in costmap["plugins"] if costmap[name]["plugin"] == PLUGIN]
    assert len(layers) == 1, "the example has one semantic_segmentation_layer"
    return [layers[0][s] for s in layers[0]["observation_sources"].split()]


def class_costs(source: dict) -> dict[str, dict]:
    """Class name -> its type's parameters, as the layer builds it; fails on a name listed twice."""
    listed = Counter(name for t in source["class_types"] for name in source[t]["classes"])
    twice = sorted(n for n, k in listed.items() if k > 1)
    assert not twice, f"listed in two class types (the layer would keep only the first): {twice}"
    return {name: source[t] for t in source["class_types"] for name in source[t]["classes"]}


def test_every_class_the_node_names_is_mapped_exactly_once_with_valid_costs():
    """The names our LabelInfo carries (the class table's, in id order) are the example's, each once."""
    names = list(ClassTable.cityscapes().names)
    assert len(names) == 19
    for source in layer_sources():
        costs = class_costs(source)
        assert sorted(costs) == sorted(names), (
            f"unmapped (CRITICAL in the layer): {sorted(set(names) - set(costs))}; "
            f"not a class of ours: {sorted(set(costs) - set(names))}")
        for t in source["class_types"]:
            params = source[t]
            assert set(params) == set(CLASS_TYPE_PARAMS), t
            for key, kind in CLASS_TYPE_PARAMS.items():
                assert type(params[key]) is kind, f"{t}.{key} must be a {kind.__name__}"
            assert 0 <= params["base_cost"] <= params["max_cost"] <= 254, t
            assert 0 <= params["mark_confidence"] <= 255 and params["samples_to_max_cost"] >= 0, t
        # people and vehicles are obstacles however the robot is configured otherwise
        for name in ("person", "rider", "car", "truck", "bus", "bicycle", "motorcycle"):
            assert costs[name]["base_cost"] == 254, name
        assert costs["road"]["max_cost"] == 0


def test_the_example_names_our_topics():
    """Every topic the example names is one the node publishes (default name, one camera)."""
    pytest.importorskip("rclpy")
    from liteseg_ros.node import NODE_NAME

    rows = {f"/{NODE_NAME}/{o.suffix}": o for o in contract.OUTPUTS}
    label_info = f"/{NODE_NAME}/{contract.LABEL_INFO_SUFFIX}"
    for source in layer_sources():
        # the layer reads mono8 images: class ids, and confidence 0..255
        mask, conf = rows[source["segmentation_topic"]], rows[source["confidence_topic"]]
        assert (mask.msgtype, mask.encoding, mask.product) == (contract.IMAGE, "mono8", "label")
        assert (conf.msgtype, conf.encoding, conf.product) == (contract.IMAGE, "mono8", "confidence")
        assert source["labels_topic"] == label_info
        assert source["pointcloud_topic"] not in rows and source["pointcloud_topic"] != label_info  # the camera's


@pytest.mark.ros
def test_the_node_feeds_the_layer_s_subscriptions(start_node, ros, tiny_checkpoint):
    """Subscribed as the layer subscribes (sensor-data QoS for the images, reliable + transient local for
    LabelInfo): one frame gives mask and confidence with the input's stamp (its exact-time pairing), mono8
    at the input's size (one point-cloud point per pixel), label values LabelInfo names, all mapped."""
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not generated here (../shared/ros2-cli)")
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from vision_msgs.msg import LabelInfo

    from liteseg_ros import image_codec
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    (source,) = layer_sources()
    node = start_node({"weights": str(tiny_checkpoint), "network_width": 96, "network_height": 64})
    sensor = QoSProfile(depth=50, reliability=qos_profile_sensor_data.reliability,
                        durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
    labels_qos = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    masks = ros.collect(Image, source["segmentation_topic"], sensor)
    confidences = ros.collect(Image, source["confidence_topic"], sensor)
    label_infos = ros.collect(LabelInfo, source["labels_topic"], labels_qos)
    cam = ros.node.create_publisher(Image, "/image", QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE))
    ros.wait_for(lambda: cam.get_subscription_count() > 0 or not node.alive(), 60, "the node's image subscription")
    assert node.alive(), node.output()
    ros.wait_for(lambda: label_infos, 60, "latched LabelInfo")
    ros.wait_for(lambda: ros.node.count_publishers(source["segmentation_topic"]) > 0
                 and ros.node.count_publishers(source["confidence_topic"]) > 0, 30, "mask and confidence publishers")

    h, w, stamp = 180, 320, 1_700_000_123_000_000_000
    msg = Image()
    image_codec.fill_image(msg, generate_scene(3, SceneConfig(height=h, width=w)).image, "bgr8")
    msg.header.frame_id = "camera_color_optical_frame"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    # the node makes only the outputs it sees subscribed; publish until both arrive
    end = time.monotonic() + 60
    while not (masks and confidences) and time.monotonic() < end:
        cam.publish(msg)
        time.sleep(0.3)
    assert masks and confidences, f"no mask or confidence for the frame:\n{node.output()[-3000:]}"

    mask, conf = masks[0], confidences[0]
    for m in (mask, conf):
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == divmod(stamp, 1_000_000_000)
        assert m.header.frame_id == msg.header.frame_id
        assert m.encoding == "mono8" and (m.height, m.width) == (h, w)
    classes = {c.class_id: c.class_name for c in label_infos[-1].class_map}
    costs = class_costs(source)
    assert set(classes.values()) <= set(costs), "a LabelInfo name the layer does not map (CRITICAL)"
    values = set(np.unique(image_codec.decode_image(mask, want="bgr8")[:, :, 0]).tolist())
    assert values - {255} <= set(classes), f"label values LabelInfo does not name: {values - set(classes)}"
    assert node.alive(), node.output()
