"""`python -m training.quickstart`: the command line of `training/quickstart/__init__.py`."""

from modeling_mobileclip.cli import run_main
from training.quickstart import main

if __name__ == "__main__":
    run_main(main)
