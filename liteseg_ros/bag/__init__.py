"""Offline bag -> bag segmentation (``liteseg bag``) and a ROS 2 bag player (``liteseg play``).

Ring 3 (ROS edge), one module per job: ``store`` (reading and writing bags with rosbags),
``files`` (never deleting what this tool did not write), ``segment`` (bag -> bag through the
pipeline and the node's contract), ``play`` (publishing a bag live; the only one importing rclpy)
and ``cli`` (the two commands). ``liteseg bag`` needs no ROS install: it reads and writes rosbag2
bags (sqlite3 and mcap) with the ``rosbags`` library and never imports rclpy or a message package;
``play`` imports rclpy lazily inside :func:`play_bag`. It never has its own copy of the per-frame work: the
pipeline comes from :func:`liteseg_ros.runtime.build_pipeline` (the node's parameter names and
validation from :mod:`liteseg_ros.params`) and every frame goes through ``Pipeline.run``; images are
decoded and written with :mod:`liteseg_ros.image_codec`, exactly as the node does.

Output layout: the names the node named ``<node_name>`` (default ``liteseg``) publishes, with the
node's messages: both come from :mod:`liteseg_ros.contract`.

- one ``--topic``: ``/liteseg/label``, ``/color``, ``/overlay``, ``/confidence``, ``/masks/<group>``,
  ``/drivable_boundary``, ``/stats`` and the latched ``/liteseg/info`` -- the single-camera node;
- several ``--topic``: the node's multi-camera layout (parameter ``cameras``): ``/liteseg/<camera>/label``
  ... per camera and one ``/liteseg/info``. Camera names come from ``--cameras`` (in ``--topic``
  order), else from the params file's ``cameras`` (when it names as many cameras as there are
  topics), else from each topic (:func:`camera_names`): the last namespace segment
  (``/front/image_raw`` -> ``front``, ``/cam/left/image_raw`` -> ``left``, ``/image_left`` ->
  ``image_left``), more segments where that is ambiguous (``/a/cam/image``, ``/b/cam/image`` ->
  ``a_cam``, ``b_cam``), the whole topic where even that is (``/cam/image_raw``, ``/cam/image_rect``
  -> ``cam_image_raw``, ``cam_image_rect``).

Batching follows the node's rule on the bag's timeline: with several cameras (and ``batch_cameras``)
one forward takes at most one frame per camera, whose recorded times lie within ``batch_window_ms``
of the first; ``--batch N`` instead batches every N frames.

Every output carries the input frame's header (stamp and frame_id) and is written at the input
message's recorded (receive) time. Input topics, all of them, are copied byte for byte (with their
recorded QoS; where none was recorded: sensor-data QoS for images, reliable for the rest). Outputs
are recorded with the node's QoS: reliable, and transient local for ~/info and ~/label_info. Not written
(they need live inputs): ~/label/camera_info, /diagnostics.
"""
from __future__ import annotations

from liteseg_ros.bag.files import OWNER_FILE, WRITER_KEY, check_output, clean_stale_partials, written_by_us
from liteseg_ros.bag.play import play_bag
from liteseg_ros.bag.segment import BagSummary, camera_names, segment_bag, settings_from
from liteseg_ros.bag.store import IMAGE_TYPES, STORAGES, BagError, make_typestore

__all__ = ["IMAGE_TYPES", "OWNER_FILE", "STORAGES", "WRITER_KEY", "BagError", "BagSummary", "camera_names",
           "check_output", "clean_stale_partials", "make_typestore", "play_bag", "segment_bag", "settings_from",
           "written_by_us"]
