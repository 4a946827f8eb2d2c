"""`python -m training.quickstart`: the command line of `training/quickstart/__init__.py`."""

from modeling_mobileclip.cli import run_main

from . import main

run_main(main)
