"""ARO loaders and scoring on tiny fixtures in the published layouts."""

import json
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import aro
from evaluation.common import EvaluationInputError, make_accelerator
from eval_helpers import ColourModel, ColourProcessor
from torch_threads import single_torch_thread  # noqa: F401 (fixture)


def _two_colour_image(path):
    """Left half red, right half blue: only a correct crop makes the box's colour win."""
    image = Image.new("RGB", (16, 8), (255, 0, 0))
    image.paste((0, 0, 255), (8, 0, 16, 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _vg_case(box_half: str, true_colour: str, false_colour: str, **group) -> dict:
    x = 0 if box_half == "left" else 8
    return {"image_id": 1, "image_path": "2345.png", "bbox_x": x, "bbox_y": 0, "bbox_w": 8, "bbox_h": 8,
            "true_caption": f"the {true_colour} thing", "false_caption": f"the {false_colour} thing", **group}


@pytest.fixture
def vg_root(tmp_path):
    _two_colour_image(tmp_path / "images" / "2345.png")
    relations = [
        _vg_case("right", "blue", "red", relation_name="on"),   # right
        _vg_case("left", "blue", "red", relation_name="on"),    # wrong
        _vg_case("left", "red", "blue", relation_name="holding"),  # right
        _vg_case("left", "blue", "red", relation_name="next to"),  # wrong, excluded from the macro average
    ]
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(relations))
    # Pair red_blue: 25 cases, 20 right; pair big_small: 2 cases (< 25, left out of the macro average), both wrong.
    attributes = [_vg_case("right" if i < 20 else "left", "blue", "red", attributes=["red", "blue"]) for i in range(25)]
    attributes += [_vg_case("left", "blue", "red", attributes=["big", "small"]) for _ in range(2)]
    (tmp_path / "visual_genome_attribution.json").write_text(json.dumps(attributes))
    return tmp_path


def test_visual_genome_macro_accuracy_hand_computed(vg_root):
    accelerator = make_accelerator(cpu=True)
    cases = aro.load_cases("vg_relation", vg_root)
    assert cases[0].captions == ["the red thing", "the blue thing"] and cases[0].correct == 1 and cases[0].box == (8, 0, 16, 8)
    metrics = aro.aro_metrics("vg_relation", cases, aro.score_cases(ColourModel(), ColourProcessor(), cases, accelerator, 3))
    assert metrics == pytest.approx({"macro_accuracy": 0.75, "accuracy": 0.5, "num_groups": 2})
    cases = aro.load_cases("vg_attribution", vg_root)
    metrics = aro.aro_metrics("vg_attribution", cases, aro.score_cases(ColourModel(), ColourProcessor(), cases, accelerator, 8))
    assert metrics == pytest.approx({"macro_accuracy": 0.8, "accuracy": 20 / 27, "num_groups": 1})


def _tagger(text):
    tags = {"cat": "NN", "mat": "NN", "dogs": "NNS", "red": "JJ", "big": "JJ"}
    return [(word, tags.get(word.lower(), "DT")) for word in text.split()]


def test_order_perturbations_keep_the_words_they_should():
    rng = np.random.default_rng(0)
    words = "A big cat sat on the red mat near two dogs".split()
    nouns_adjs, all_but, within, across = (o.split() for o in aro.order_perturbations(" ".join(words), _tagger, rng))
    for option in (nouns_adjs, all_but, within, across):
        assert Counter(option) == Counter(words)
    tagged = dict(_tagger(" ".join(words)))
    noun_positions = [i for i, w in enumerate(words) if tagged[w].startswith("NN")]
    other_positions = [i for i, w in enumerate(words) if tagged[w] == "DT"]
    assert {nouns_adjs[i] for i in noun_positions} == {words[i] for i in noun_positions}
    assert [nouns_adjs[i] for i in other_positions] == [words[i] for i in other_positions]
    assert [all_but[i] for i in range(len(words)) if i not in other_positions] == [w for i, w in enumerate(words) if i not in other_positions]
    assert [Counter(within[i:i + 3]) for i in range(0, len(words), 3)] == [Counter(words[i:i + 3]) for i in range(0, len(words), 3)]
    # The trigram shuffle is the original trigrams (words are unique here), intact, in some order.
    remaining, position = [words[i:i + 3] for i in range(0, len(words), 3)], 0
    while remaining:
        match = next(t for t in remaining if across[position:position + len(t)] == t)
        remaining.remove(match)
        position += len(match)
    assert aro.pre_caption('A "Red" cat; on: the (mat)!') == "a red cat on the mat"
    assert aro.pre_caption("one two three", max_words=2) == "one two"


def test_order_dataset_layout_and_precision(tmp_path, monkeypatch):
    _two_colour_image(tmp_path / "val2014" / "1.png")
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(
        [{"image": "val2014/1.png", "caption": ["A big cat on the red mat.", "Two dogs."], "image_id": 1}]))
    cases = aro.load_order_dataset(tmp_path, "coco_order", tagger=_tagger, seed=3)
    assert len(cases) == 2 and all(len(c.captions) == 5 and c.correct == 0 for c in cases)
    assert cases[0].captions[0] == "a big cat on the red mat" and cases[0].image_path == tmp_path / "val2014" / "1.png"
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.4], [0.2, 0.5, 0.1, 0.1, 0.1]])
    assert aro.aro_metrics("coco_order", cases, scores) == {"precision@1": 0.5}
    # Without spaCy's tagger the order tasks explain what to install (spaCy hidden, whether installed here or not).
    monkeypatch.setitem(sys.modules, "spacy", None)
    aro.spacy_tagger.cache_clear()
    with pytest.raises(EvaluationInputError, match="pip install spacy"):
        aro.load_cases("coco_order", tmp_path)


def test_aro_cli_and_bad_input(vg_root, tiny_model_dir, tmp_path):
    out = tmp_path / "vgr.json"
    metrics = aro.main(["--model", str(tiny_model_dir), "--task", "vg_relation", "--root", str(vg_root), "--cpu",
                        "--num-workers", "0", "--output", str(out)])
    record = json.loads(out.read_text())
    assert record["metrics"] == pytest.approx(metrics) and metrics["num_groups"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationInputError, match="visual_genome_attribution.json does not exist"):
        aro.load_cases("vg_attribution", empty)
    (empty / "visual_genome_attribution.json").write_text(json.dumps([{"image_path": "x.png"}]))
    with pytest.raises(EvaluationInputError, match=r"case 0: missing key 'bbox_x'"):
        aro.load_cases("vg_attribution", empty)
