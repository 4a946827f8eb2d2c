"""A web demo for any MobileCLIP folder, Hub id or ONNX export: zero-shot classification, text-to-image and
image-to-image search, several models side by side (`python -m evaluation.demo --help`).

The serving path of an ONNX export needs numpy, Pillow, tokenizers and onnxruntime only: torch is imported only when a
PyTorch model is served (`torch_encoder.py`).
"""
