"""The command layer (ring 4): argparse parsers and handlers of ``liteseg`` subcommands whose library
code lives in an inner ring (``commands.engines``: export, bench, quantize). liteseg_ros/cli.py
registers them; nothing in rings 0-3 imports this package."""
