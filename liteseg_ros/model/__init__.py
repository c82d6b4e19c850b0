"""LiteSeg model library: the network, its backbones, checkpoint I/O, complexity counts and BN folding.

Ring 1: imports torch, torchvision and ``liteseg_ros.classes`` only; never rclpy, message packages,
cv_bridge, ``liteseg_ros.node``, ``liteseg_ros.bag`` or ``liteseg_ros.image_codec``.
"""
from .checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    load_encoder_weights,
    official_state_dict,
    read_extra,
    save_checkpoint,
)
from .complexity import UNUSED_OFFICIAL_PARAMS, count_macs, count_parameters, describe
from .fold import fold_batchnorm
from .liteseg import BACKBONES, BackboneSpec, LiteSeg, LiteSegHead, backbone_spec

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "CheckpointError",
    "CheckpointMeta",
    "LiteSeg",
    "LiteSegHead",
    "UNUSED_OFFICIAL_PARAMS",
    "backbone_spec",
    "count_macs",
    "count_parameters",
    "describe",
    "fold_batchnorm",
    "load_checkpoint",
    "load_encoder_weights",
    "official_state_dict",
    "read_extra",
    "save_checkpoint",
]
