"""Reinforced MobileCLIP training with Accelerate: `accelerate launch training/train.py --config ...`."""
