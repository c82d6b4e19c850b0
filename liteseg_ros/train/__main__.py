"""``python -m liteseg_ros.train [--config FILE] [--set k=v ...]`` (train) or ``... eval ...`` (evaluate).

Ring 4 (faces): never imports rclpy or message packages. This is the form ``torchrun`` /
``python -m torch.distributed.run --nproc_per_node N -m liteseg_ros.train ...`` launches.
"""
import sys

from liteseg_ros.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
