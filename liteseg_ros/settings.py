"""What building a pipeline needs from the parameters, typed: one frozen record instead of a dict of names.

Ring 0: standard library only (no numpy, torch or ROS), so the parameter table (``params``, ring 3)
can produce it and the runtime (ring 2) can take it without either importing the other's world.
``params.pipeline_settings`` is the one place that makes one from parameter values (validated, mask
groups gathered from their ``mask_groups.<group>`` keys); ``runtime.build_pipeline`` takes it. The
field names are the parameter names, and their defaults, ranges and help live in the parameter table
only: a record is always made from validated values, never from defaults written here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineSettings:
    """The weights, the engine and the per-frame pipeline, as the parameters of the same names say."""

    # the weights
    weights: str
    allow_random_weights: bool
    allow_download: bool
    backbone: str
    # the engine
    backend: str
    device: str
    precision: str
    min_label_agreement: float
    num_threads: int
    engine_cache_dir: str
    # the per-frame pipeline
    network_width: int
    network_height: int
    resize_mode: str
    output_resolution: str
    overlay_alpha: float
    confidence_threshold: float
    #: group -> class names, in declaration order (the ``mask_groups.<group>`` parameters)
    mask_groups: Mapping[str, tuple[str, ...]]

    @property
    def network_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return int(self.network_height), int(self.network_width)
