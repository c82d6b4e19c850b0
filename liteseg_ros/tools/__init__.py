"""Offline tools on top of the pipeline: int8 quantization with its report, and engine benchmarks.

Ring 2, above the pipeline: they import the engines, the pipeline and the synthetic scenes (to
calibrate, to compare against PyTorch fp32, to time end to end); never rclpy or message packages.
The engines library imports none of this: ``engines`` runs a network, these tools make files for
it and measure it. ``liteseg quantize``/``liteseg bench`` and the benchmarks call them.
"""
