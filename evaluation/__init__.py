"""Evaluation of MobileCLIP models, numerically comparable with CLIP_benchmark and the MobileCLIP papers.

Command lines (run from the repository root):

- `python -m evaluation.zero_shot`: zero-shot classification (acc1, acc5, mean per-class recall / mAP).
- `python -m evaluation.retrieval`: image-text retrieval recall@1/5/10.
- `python -m evaluation.suite`: the 38-task DataComp suite (Avg38), one result file per task, resumable.
- `python -m evaluation.aro`: ARO compositionality (VG-Relation, VG-Attribution, COCO-Order, Flickr30k-Order).
- `python -m evaluation.latency`: image/text encoder latency and throughput against open_clip / timm peers.

All of them run under `accelerate launch` across processes. The metric definitions live in the `evaluate` modules
under `evaluation/metrics/` (loadable offline by path).
"""
