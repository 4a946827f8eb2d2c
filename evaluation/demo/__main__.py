"""`python -m evaluation.demo`: see `cli.py`."""

from evaluation.demo.cli import main
from modeling_mobileclip.cli import run_main

if __name__ == "__main__":
    run_main(main)
