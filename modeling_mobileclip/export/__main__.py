"""`python -m modeling_mobileclip.export`: see `command_line.py`."""

from modeling_mobileclip.cli import run_main
from modeling_mobileclip.export.command_line import main

if __name__ == "__main__":
    run_main(main)
