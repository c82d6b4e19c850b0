"""Training and evaluation of LiteSeg: datasets, metrics, config, the train loop and ``liteseg train/eval``.

Ring 4 (faces): never imports rclpy, message packages or ``liteseg_ros.node`` / ``liteseg_ros.bag`` /
``liteseg_ros.image_codec``. Submodules import torch; import them directly
(``from liteseg_ros.train.trainer import train``).
"""
from liteseg_ros.train.config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config"]
