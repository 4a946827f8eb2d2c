"""ARO compositionality benchmark (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution, COCO-Order,
Flickr30k-Order, read from the published files.

    python -m evaluation.aro --model DIR_OR_ID --task vg_relation|vg_attribution|coco_order|flickr30k_order \
        --root DIR [--batch-size 32] [--seed 1] [--output results.json]

Published layouts (mertyg/vision-language-models-are-bows, `dataset_zoo/`):

- VG-Relation / VG-Attribution: `<root>/visual_genome_relation.json` / `visual_genome_attribution.json` (a list of
  test cases with `image_path`, `bbox_x/y/w/h`, `true_caption`, `false_caption`, and `relation_name` or
  `attributes`) and the images under `<root>/images/`. The image is cropped to the box; the model is right when
  it scores the true caption above the false one. Reported: macro accuracy over relations, without the
  order-insensitive relations (`data/aro_vg_relation_excluded.json`, the list of ARO's replication notebook), and
  over attribute pairs with at least 25 cases, as the paper does; plus the plain accuracy.
- COCO-Order / Flickr30k-Order: the Karpathy test split, `<root>/coco_karpathy_test.json` /
  `flickr30k_test.json` (a list of `{"image": relative path, "caption": [...]}`) with the images under `<root>`.
  Each caption becomes a case with 5 options: the caption and four word-order perturbations (nouns and adjectives
  shuffled, everything else shuffled, words shuffled within trigrams, trigrams shuffled), all lower-cased and
  stripped of punctuation as ARO's `pre_caption` does; right when the original scores highest (precision@1).

The perturbations need part-of-speech tags: spaCy's `en_core_web_sm` (`pip install spacy` and
`python -m spacy download en_core_web_sm`) unless a `tagger` is passed; they are drawn with a seeded generator, so
a run is reproducible but not token-identical to ARO's own random draws.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from modeling_mobileclip.cli import run_main

from .common import (
    DATA_DIR, EvaluationConfig, EvaluationInputError, add_trust_remote_code_argument, build_dataloader,
    encode_images, encode_texts, load_evaluated_model, make_accelerator, preprocess_images, progress,
    report_results, tokenize
)


# Penn Treebank tags ARO treats as nouns and adjectives (`dataset_zoo/perturbations.py`).
NOUN_TAGS = {"NN", "NNS", "NNP", "NNPS"}
ADJECTIVE_TAGS = {"JJ", "JJR", "JJS"}
Tagger = Callable[[str], list[tuple[str, str]]]


@dataclass
class AROCase:
    """One test case: an image (optionally cropped to `box` = left, top, right, bottom), caption options, and the
    index of the correct option; `group` is the relation / attribute pair used for macro accuracy."""

    image_path: Path
    captions: list[str]
    correct: int
    box: tuple[float, float, float, float] | None = None
    group: str | None = None


def _read_annotations(path: Path) -> list[dict]:
    if not path.is_file():
        raise EvaluationInputError(f"ARO annotation file {path} does not exist (see `python -m evaluation.aro --help` for the layout).")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationInputError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(items, list) or not items:
        raise EvaluationInputError(f"{path} must hold a non-empty JSON list of test cases.")
    return items


def _field(item: dict, key: str, index: int, path: Path) -> Any:
    if key not in item:
        raise EvaluationInputError(f"{path}, case {index}: missing key {key!r} (keys: {', '.join(item)}).")
    return item[key]


def load_visual_genome(root: str | Path, task: str) -> list[AROCase]:
    """VG-Relation (`task="vg_relation"`) or VG-Attribution (`"vg_attribution"`) cases; options are
    [false caption, true caption] as in ARO, so option 1 is correct."""
    root = Path(root)
    path = root / ("visual_genome_relation.json" if task == "vg_relation" else "visual_genome_attribution.json")
    cases = []
    for index, item in enumerate(_read_annotations(path)):
        x, y, w, h = (float(_field(item, k, index, path)) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        if task == "vg_relation":
            group = _field(item, "relation_name", index, path)
        else:
            attributes = _field(item, "attributes", index, path)
            group = f"{attributes[0]}_{attributes[1]}"
        captions = [_field(item, "false_caption", index, path), _field(item, "true_caption", index, path)]
        cases.append(AROCase(root / "images" / _field(item, "image_path", index, path), captions, 1, (x, y, x + w, y + h), group))
    return cases


def pre_caption(caption: str, max_words: int = 30) -> str:
    """ARO's caption normalisation: lower-case, punctuation `.!"()*#:;~` to spaces, single spaces, at most
    `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


@lru_cache(maxsize=1)
def spacy_tagger() -> Tagger:
    """Tokens and fine-grained (Penn) tags from spaCy's `en_core_web_sm`, the tagger ARO uses."""
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm")
    except (ImportError, OSError) as error:
        raise EvaluationInputError(
            "COCO-Order / Flickr30k-Order need a part-of-speech tagger: `pip install spacy` and "
            f"`python -m spacy download en_core_web_sm` ({error})."
        ) from None
    return lambda text: [(token.text, token.tag_) for token in nlp(text)]


def _shuffled(words: list[str], positions: list[int], rng: np.random.Generator) -> list[str]:
    """`words` with the words at `positions` permuted among those positions."""
    words = list(words)
    for position, word in zip(positions, [words[p] for p in rng.permutation(positions)]):
        words[position] = word
    return words


def _trigrams(words: list[str]) -> list[list[str]]:
    return [words[i : i + 3] for i in range(0, len(words), 3)]


def order_perturbations(caption: str, tagger: Tagger, rng: np.random.Generator) -> list[str]:
    """ARO's four word-order perturbations of `caption` (before `pre_caption`)."""
    tagged = tagger(caption)
    words = [word for word, _ in tagged]
    nouns = [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS]
    adjectives = [i for i, (_, tag) in enumerate(tagged) if tag in ADJECTIVE_TAGS]
    others = [i for i, (_, tag) in enumerate(tagged) if tag not in NOUN_TAGS | ADJECTIVE_TAGS]
    nouns_and_adjectives = _shuffled(_shuffled(words, nouns, rng), adjectives, rng)
    all_but = _shuffled(words, others, rng)
    within = [word for trigram in _trigrams(words) for word in rng.permutation(trigram).tolist()]
    trigrams = _trigrams(words)
    across = [word for i in rng.permutation(len(trigrams)) for word in trigrams[i]]
    return [" ".join(option) for option in (nouns_and_adjectives, all_but, within, across)]


def load_order_dataset(root: str | Path, task: str, tagger: Tagger | None = None, seed: int = 1,
                       max_words: int = 30) -> list[AROCase]:
    """COCO-Order (`task="coco_order"`) or Flickr30k-Order (`"flickr30k_order"`) cases: option 0 (the original
    caption) is correct, options 1-4 are its perturbations."""
    root = Path(root)
    path = root / ("coco_karpathy_test.json" if task == "coco_order" else "flickr30k_test.json")
    tagger = tagger or spacy_tagger()
    rng = np.random.default_rng(seed)
    cases = []
    for index, item in enumerate(_read_annotations(path)):
        image = root / _field(item, "image", index, path)
        captions = _field(item, "caption", index, path)
        for caption in [captions] if isinstance(captions, str) else captions:
            options = [caption, *order_perturbations(caption, tagger, rng)]
            cases.append(AROCase(image, [pre_caption(option, max_words) for option in options], 0))
    return cases


class _CaseBatch:
    """Collates cases into pixel values (cropped as the case says) and the token ids of all caption options."""

    def __init__(self, processor: Any, cases: Sequence[AROCase]):
        self.processor, self.cases = processor, cases

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        images, captions = [], []
        for index in indices:
            case = self.cases[index]
            if not case.image_path.is_file():
                raise EvaluationInputError(f"ARO case {index}: image {case.image_path} does not exist.")
            image = Image.open(case.image_path).convert("RGB")
            images.append(image.crop(case.box) if case.box else image)
            captions.extend(case.captions)
        return {"pixel_values": preprocess_images(self.processor, images), "input_ids": tokenize(self.processor, captions)}


@torch.no_grad()
def score_cases(model, processor, cases: Sequence[AROCase], accelerator: Accelerator, batch_size: int = 32,
                num_workers: int = 0) -> torch.Tensor:
    """(cases, options) image-caption cosine similarities, gathered from all processes in case order."""
    options = {len(case.captions) for case in cases}
    if len(options) != 1:
        raise EvaluationInputError(f"All ARO cases must have the same number of caption options, got {sorted(options)}.")
    num_options = options.pop()
    loader = build_dataloader(range(len(cases)), _CaseBatch(processor, cases), batch_size, num_workers, accelerator)
    scores = []
    for batch in progress(loader, accelerator, "ARO cases"):
        images = encode_images(model, batch["pixel_values"])
        texts = encode_texts(model, batch["input_ids"]).view(len(images), num_options, -1)
        scores.append(accelerator.gather_for_metrics(torch.einsum("bd,bld->bl", images, texts)).cpu())
    return torch.cat(scores)


def aro_metrics(task: str, cases: Sequence[AROCase], scores: torch.Tensor) -> dict:
    """ARO's reported numbers: macro accuracy (VG tasks, as the paper) or precision@1 (order tasks)."""
    # np.argmax takes the first maximum, as ARO's evaluation does (a tie counts for the first option).
    predicted = np.argmax(scores.numpy(), axis=1)
    correct = predicted == np.array([case.correct for case in cases])
    if task in ("coco_order", "flickr30k_order"):
        return {"precision@1": float(correct.mean())}
    groups = np.array([case.group for case in cases])
    if task == "vg_relation":
        excluded = set(json.loads((DATA_DIR / "aro_vg_relation_excluded.json").read_text()))
        kept = [g for g in np.unique(groups) if g not in excluded]
    else:
        kept = [g for g in np.unique(groups) if (groups == g).sum() >= 25]
    macro = float(np.mean([correct[groups == g].mean() for g in kept])) if kept else float("nan")
    return {"macro_accuracy": macro, "accuracy": float(correct.mean()), "num_groups": len(kept)}


TASKS = ("vg_relation", "vg_attribution", "coco_order", "flickr30k_order")


def load_cases(task: str, root: str | Path, tagger: Tagger | None = None, seed: int = 1) -> list[AROCase]:
    """The cases of one ARO task from its published files under `root`."""
    if task not in TASKS:
        raise EvaluationInputError(f"Unknown ARO task {task!r}; choose one of {', '.join(TASKS)}.")
    if task.startswith("vg_"):
        return load_visual_genome(root, task)
    return load_order_dataset(root, task, tagger, seed)


@dataclass(kw_only=True)
class AROConfig(EvaluationConfig):
    """One field per command-line option, with the same defaults."""

    task: str
    """One of `TASKS`."""
    root: str
    batch_size: int = 32
    seed: int = 1
    output: str | None = None


def aro_evaluation(settings: AROConfig) -> dict:
    """Score `settings.model` on one ARO task, print (and with `output` write) the metrics; return them."""
    accelerator = make_accelerator(settings.cpu)
    cases = load_cases(settings.task, settings.root, seed=settings.seed)
    model, processor = load_evaluated_model(settings.model, accelerator, settings.trust_remote_code)
    scores = score_cases(model, processor, cases, accelerator, settings.batch_size, settings.num_workers)
    metrics = aro_metrics(settings.task, cases, scores)
    report_results(accelerator, model, f"ARO {settings.task} ({len(cases)} cases):", metrics,
                   "image_caption_selection", model_id=settings.model, dataset=f"aro/{settings.task}",
                   output=settings.output)
    return metrics


def parse_args(argv: list[str] | None = None) -> AROConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--root", required=True, help="folder with the task's published annotation file and images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="seed of the order perturbations")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--output", default=None, help="write the result JSON here")
    add_trust_remote_code_argument(parser)
    return AROConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the metrics."""
    return aro_evaluation(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
