"""The README's main job (`python -m training.quickstart`): the learning-efficiency experiment at `--scale tiny`.

Checked here: every artefact (curves, plot, both students load with AutoModel, the factor line parses), not the
factor's value. Oracles: the final students and the teacher are loaded again from their saved folders (AutoModel,
AutoProcessor) and scored by hand (numpy ranks, not the `evaluation` functions the quickstart scores with); they must
reproduce the curves' last points and the teacher's point. The factor and the metrics are recomputed from hand-made
curves and with `clip_benchmark`'s and scikit-learn's own functions; a rerun reuses every stage.
"""

import json
import re
import shlex
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT
from eval_helpers import embed_with_saved_model, hand_mean_reciprocal_rank, hand_retrieval_recalls, hand_top_k

BUNDLED_EMOJI = REPO_ROOT / "dataset_scripts" / "data" / "emoji"
TINY = ["--scale", "tiny", "--num-threads", "1"]


def test_bundled_emoji_data_ships_both_styles_with_their_licenses():
    names = {path.name for path in BUNDLED_EMOJI.iterdir()}
    assert {"twitter.parquet", "google.parquet", "classnames.json", "README.md", "LICENSE-twemoji.txt",
            "LICENSE-noto-emoji.txt", "LICENSE-emoji-data.txt", "LICENSE-unicode-cldr.txt"} <= names
    card = (BUNDLED_EMOJI / "README.md").read_text()
    assert "config_name: twitter" in card and "config_name: google" in card
    val_unified = json.loads((BUNDLED_EMOJI / "classnames.json").read_text())["split"]["val_unified"]
    for style in ("twitter", "google"):
        rows = datasets.load_dataset(str(BUNDLED_EMOJI), style, split="train")
        splits = rows["split"]
        assert len(rows) == 1906 and splits.count("train") == 1688 and splits.count("val") == 218
        assert set(rows["style"]) == {style}
        assert sorted(val_unified) == sorted(u for u, s in zip(rows["unified"], splits) if s == "val")


def test_factor_interpolates_between_evaluation_points():
    from training.quickstart.report import first_step_reaching, learning_efficiency_factor

    plain = ([0, 100, 200, 300, 400], [0.0, 0.01, 0.02, 0.03, 0.04])
    # The reinforced curve crosses 0.04 between step 100 (0.03) and step 200 (0.05): at 150 -> 400 / 150.
    faster = ([0, 100, 200, 300, 400], [0.0, 0.03, 0.05, 0.06, 0.07])
    result = learning_efficiency_factor(plain, faster)
    assert result["reinforced_step_reaching_plain_final"] == pytest.approx(150.0)
    assert result["factor"] == pytest.approx(400 / 150)
    # Never reaching the plain final value: the plain curve reaches the reinforced final 0.025 at step 250.
    slower = ([0, 100, 200, 300, 400], [0.0, 0.01, 0.015, 0.02, 0.025])
    result = learning_efficiency_factor(plain, slower)
    assert result["reinforced_step_reaching_plain_final"] is None
    assert result["factor"] == pytest.approx(250 / 400)
    assert first_step_reaching([0, 10], [0.5, 0.9], 0.1) == 0.0


def test_bootstrap_interval_resamples_the_same_images_for_both_students():
    import numpy as np

    from training.quickstart.report import bootstrap_factor, learning_efficiency_factor

    steps = [0, 100, 200, 300, 400]
    rng = np.random.default_rng(0)
    # Per-image scores rising linearly; the reinforced student twice as fast, plus image-level noise shared by both.
    difficulty = rng.uniform(0.5, 1.5, 300)
    plain = np.outer(np.linspace(0, 0.4, 5), difficulty)
    reinforced = np.outer(np.minimum(np.linspace(0, 0.8, 5), 0.8), difficulty)
    point = learning_efficiency_factor((steps, plain.mean(1)), (steps, reinforced.mean(1)))["factor"]
    assert point == pytest.approx(2.0)
    # The same images for both students: an image effect common to both cancels, so the interval is the point.
    assert bootstrap_factor(steps, plain, reinforced, samples=200) == pytest.approx((2.0, 2.0))
    # Independent per-image noise widens it around the point, and the percentiles come from numpy's own.
    noisy = reinforced + rng.normal(0, 0.3, reinforced.shape)
    low, high = bootstrap_factor(steps, plain, noisy, samples=200, seed=1)
    resampled = np.random.default_rng(1)
    factors = []
    for _ in range(200):
        chosen = resampled.integers(0, 300, 300)
        factors.append(learning_efficiency_factor((steps, plain[:, chosen].mean(1)),
                                                  (steps, noisy[:, chosen].mean(1)))["factor"])
    assert (low, high) == tuple(np.percentile(factors, (5, 95), method="inverted_cdf"))
    assert low < high


def test_metrics_match_scikit_learn_and_clip_benchmark():
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k
    from sklearn.metrics import top_k_accuracy_score

    from sklearn.metrics import label_ranking_average_precision_score

    from training.quickstart.held_out import chance_levels
    from training.quickstart.scoring import reciprocal_ranks, retrieval_recalls, top_k_accuracy

    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 30, generator=generator), torch.randint(30, (50,), generator=generator)
    for k in (1, 5):  # (clip_benchmark's `accuracy` no longer runs on numpy 2; scikit-learn's is the same rule)
        assert top_k_accuracy(logits, labels, k) == pytest.approx(
            top_k_accuracy_score(labels.numpy(), logits.numpy(), k=k, labels=list(range(30))))
    # One relevant label per row: label-ranking average precision is the reciprocal rank of that label.
    one_hot = torch.nn.functional.one_hot(labels, 30).numpy()
    assert float(reciprocal_ranks(logits, labels).mean()) == pytest.approx(
        label_ranking_average_precision_score(one_hot, logits.numpy()))
    # Chance: the mean over many uniformly random score rows of 10 classes.
    from training.quickstart.held_out import HeldOutSet, ZeroShotTask

    random_scores = torch.rand(20000, 10, generator=generator)
    random_labels = torch.zeros(20000, dtype=torch.long)
    task = ZeroShotTask("names", [str(i) for i in range(10)], torch.zeros(6, dtype=torch.long))
    held_out = HeldOutSet("x", "x", torch.zeros(6, 3, 4, 4, dtype=torch.uint8), [task], [[c] for c in "abcdef"])
    assert chance_levels(held_out)["names/mrr"] == pytest.approx(
        float(reciprocal_ranks(random_scores, random_labels).mean()), abs=0.005)

    images = torch.nn.functional.normalize(torch.randn(20, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(55, 8, generator=generator), dim=-1)
    image_of_text = torch.cat([torch.arange(20), torch.arange(20), torch.randint(20, (15,), generator=generator)])
    ours = retrieval_recalls(images, texts, image_of_text, ks=(1, 5))
    scores = texts @ images.t()
    positives = torch.nn.functional.one_hot(image_of_text, 20).bool()
    for k in (1, 5):  # CLIP_benchmark's definitions: recall > 0 counts a query as found
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(
            (recall_at_k(scores, positives, k) > 0).float().mean().item())
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(
            (recall_at_k(scores.t(), positives.t(), k) > 0).float().mean().item())


def _scored_by_hand(folder: Path, rows: datasets.Dataset, names: list[str], templates: dict[str, str]) -> dict[str, float]:
    """The curve metrics of the model saved in `folder` on `rows`: zero-shot top-k and mean reciprocal rank over
    `names` (all the style's) and over the bundled subcategories and categories, and caption retrieval recall@k,
    each ranked by hand."""
    classnames = json.loads((BUNDLED_EMOJI / "classnames.json").read_text())
    subcategories, categories = classnames["subcategory_prompt_names"], classnames["category_prompt_names"]
    tasks = {"names": ("name", sorted(set(names)), {name: name for name in names}),
             "subcategories": ("subcategory", sorted(subcategories), subcategories),
             "categories": ("category", sorted(categories), categories)}
    prompts = {task: [templates[task].format(prompt_names[c]) for c in classes]
               for task, (_, classes, prompt_names) in tasks.items()}
    captions = [[caption for caption in cell if caption and caption.strip()] for cell in rows["captions"]]
    texts = [caption for cell in captions for caption in cell]
    image_of_text = [image for image, cell in enumerate(captions) for _ in cell]
    images, embedded = embed_with_saved_model(folder, rows["image"], [*sum(prompts.values(), []), *texts])
    metrics, offset = {}, 0
    for task, (column, classes, _) in tasks.items():
        scores = images @ embedded[offset: offset + len(classes)].T
        offset += len(classes)
        labels = [classes.index(value) for value in rows[column]]
        for k in (1, 5):
            metrics[f"{task}/acc{k}"] = hand_top_k(scores, labels, k)
        metrics[f"{task}/mrr"] = hand_mean_reciprocal_rank(scores, labels)
    for k in (1, 5):
        recalls = hand_retrieval_recalls(images, embedded[offset:], image_of_text, k)
        metrics.update({f"retrieval/{name}": value for name, value in recalls.items()})
    return metrics


@pytest.mark.slow
def test_quickstart_runs_the_experiment_and_writes_every_artefact(fresh_accelerate_state, tmp_path, capsys,
                                                                   monkeypatch):
    from PIL import Image
    from transformers import AutoModel

    from training.quickstart import PLOT_FILE, SCALES, TEMPLATES, main

    output = tmp_path / "quickstart"
    curves = main(["--output-dir", str(output), *TINY])
    printed = capsys.readouterr().out

    # The factor line is the last line and parses; the table and the paths are printed.
    last = printed.strip().splitlines()[-1]
    match = re.fullmatch(r"learning-efficiency factor: (\d+\.\d+|inf)x", last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(curves["factor"]["factor"], abs=0.005)
    assert "names top-5" in printed and str(Path(PLOT_FILE)) in printed
    # The demo command printed before it compares both students and the teacher on the unseen (Noto) style; the
    # demo's own parser reads it and every folder it names is a saved model.
    from evaluation.demo.cli import parse_settings

    demo_line = next(line.strip() for line in printed.splitlines() if "-m evaluation.demo" in line)
    demo = parse_settings(shlex.split(demo_line)[3:])
    assert [Path(m).resolve() for m in demo.models] == [(output / p).resolve() for p in (
        "students/clip", "students/reinforced", "teacher/model")]
    assert all((Path(m) / "config.json").is_file() for m in demo.models)
    assert (demo.images_config, demo.template) == ("google", TEMPLATES["names"]) and Path(demo.images).is_dir()

    # Curves: both students at the same steps (the shared initialisation first, the final step last).
    saved = json.loads((output / "learning_curves.json").read_text())
    assert saved["factor"] == curves["factor"]
    tiny = SCALES["tiny"]
    steps = [point["step"] for point in saved["students"]["clip"]]
    assert steps == [point["step"] for point in saved["students"]["reinforced"]]
    assert steps[0] == 0 and steps[-1] == tiny["student_steps"] and len(steps) == tiny["eval_points"] + 1
    assert saved["students"]["clip"][0] == saved["students"]["reinforced"][0]  # same initial weights
    # The curve's ends and the teacher: every metric on every set; the points between: the names task (the
    # factor's metrics) on the unseen style's reported and choosing images.
    ends = [saved["students"][m][i] for m in ("clip", "reinforced") for i in (0, -1)] + [saved["teacher"]]
    for point in ends:
        assert set(point) >= {"val", "unseen_style", "choose"} and "retrieval/image_retrieval_recall@5" in point["val"]
    for point in saved["students"]["clip"][1:-1] + saved["students"]["reinforced"][1:-1]:
        assert set(point) == {"step", "unseen_style", "choose"}
        assert set(point["unseen_style"]) == {"names/acc1", "names/acc5", "names/mrr", "names/reciprocal_ranks"}
    assert saved["teachers"] == [f"hf:{output / 'teacher' / 'model'}"]

    # The plot is a real PNG.
    with Image.open(output / PLOT_FILE) as plot:
        assert plot.format == "PNG" and plot.width > 300

    # The teacher's learned logit scale went into the reinforced data's card and into the reinforced run.
    teacher = AutoModel.from_pretrained(output / "teacher" / "model", trust_remote_code=True)
    card = (output / "reinforced" / "README.md").read_text()
    from dataset_scripts.dr_format import load_reinforcement_metadata

    metadata = load_reinforcement_metadata(output / "reinforced")
    assert metadata.teacher_logit_scales == pytest.approx([float(teacher.logit_scale.detach().exp())], rel=1e-5)
    assert metadata.captioner == "column:captions" and "column:captions" in card
    student_card = (output / "students" / "reinforced" / "README.md").read_text()
    assert f"logit scale {metadata.teacher_logit_scales[0]:g}" in student_card

    # Both students and the teacher load with AutoModel, and scored by hand from their saved folders they give the
    # curves' final points and the teacher's point on the unseen style (classes in another order than the quickstart's).
    # The reported two thirds of the unseen style (every third emoji is kept for choosing settings), names ranked
    # among all the style's names.
    unseen = datasets.load_dataset(str(BUNDLED_EMOJI), "google", split="train").select(range(tiny["rows_per_style"]))
    reported = unseen.select([i for i in range(len(unseen)) if i % 3 != 0])
    for name, folder, point in [("clip", output / "students" / "clip", saved["students"]["clip"][-1]),
                                ("reinforced", output / "students" / "reinforced", saved["students"]["reinforced"][-1]),
                                ("teacher", output / "teacher" / "model", saved["teacher"])]:
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "MobileCLIPModel"
        by_hand = _scored_by_hand(folder, reported, unseen["name"], TEMPLATES)
        assert {key: point["unseen_style"][key] for key in by_hand} == pytest.approx(by_hand, abs=1e-6), name

    # Chance levels: top-5 over the style's names, from the row count.
    assert saved["chance"]["unseen_style"]["names/acc5"] == pytest.approx(5 / tiny["rows_per_style"])
    # The factor on both metrics, the primary with its bootstrap interval, from the saved per-image ranks.
    import numpy as np

    from training.quickstart.report import bootstrap_factor

    assert saved["factor"] == saved["factors"]["names/mrr"] and "names/acc5" in saved["factors"]
    ranks = [np.array([p["unseen_style"]["names/reciprocal_ranks"] for p in saved["students"][m]])
             for m in ("clip", "reinforced")]
    assert ranks[0].shape == (tiny["eval_points"] + 1, len(reported))
    assert [p["unseen_style"]["names/mrr"] for p in saved["students"]["clip"]] == pytest.approx(ranks[0].mean(1))
    assert saved["factor"]["interval_90"] == list(bootstrap_factor(steps, *ranks, seed=0))
    assert f"{saved['factor']['interval_90'][0]:.2f}x to {saved['factor']['interval_90'][1]:.2f}x" in printed

    # Runs side by side (processes, as the default scale does on a multi-core CPU) give what runs one after the other
    # give. Here with an ensemble of two teachers, trained side by side: the first is the single run's teacher (same
    # seed), the second has its own seed; the reinforced data holds both teachers' embeddings and logit scales. The
    # plain student, which no teacher touches, has the sequential run's curve, scored by its own process.
    import training.quickstart.runs as quickstart_runs

    monkeypatch.setattr(quickstart_runs, "CONCURRENT_SCALES", ("tiny",))
    ensemble_dir = tmp_path / "ensemble"
    ensemble = main(["--output-dir", str(ensemble_dir), *TINY, "--num-teachers", "2"])
    monkeypatch.undo()
    assert ensemble["teachers"] == [f"hf:{ensemble_dir / name / 'model'}" for name in ("teacher", "teacher_2")]
    first, second = [load_file(str(ensemble_dir / name / "model" / "model.safetensors"))
                     for name in ("teacher", "teacher_2")]
    single = load_file(str(output / "teacher" / "model" / "model.safetensors"))
    assert all(torch.equal(first[key], single[key]) for key in single)
    assert not all(torch.equal(first[key], second[key]) for key in first)
    ensemble_metadata = load_reinforcement_metadata(ensemble_dir / "reinforced")
    assert ensemble_metadata.teacher_logit_scales[0] == pytest.approx(metadata.teacher_logit_scales[0], rel=1e-6)
    assert len(ensemble_metadata.teacher_logit_scales) == 2
    assert ensemble["students"]["clip"] == curves["students"]["clip"]

    # A rerun reuses every stage and reproduces the curves; other settings are refused.
    capsys.readouterr()
    rerun = main(["--output-dir", str(output), *TINY])
    assert "Reusing the teacher" in capsys.readouterr().out
    assert rerun["students"] == curves["students"] and rerun["factor"] == curves["factor"]
    with pytest.raises(ValueError, match=r"other settings \(student_steps: 8 before, 9 now\).*new --output-dir"):
        main(["--output-dir", str(output), *TINY, "--student-steps", "9"])


def _saved_random_model(folder: Path, variant: str) -> Path:
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel
    from modeling_mobileclip.model_folder import write_model_folder
    from modeling_mobileclip.processing_mobileclip import MobileCLIPProcessor

    torch.manual_seed(0)
    write_model_folder(MobileCLIPModel(MobileCLIPConfig.from_variant(variant)).eval(), folder,
                      MobileCLIPProcessor.from_variant(variant))
    return folder


def test_teacher_specs_that_cannot_be_used_fail_at_once_naming_the_spec(tmp_path):
    from training.quickstart import main

    output = tmp_path / "run"
    missing = f"hf:{tmp_path / 'no-such-teacher'}"
    with pytest.raises(ValueError, match=re.escape(repr(missing))):
        main(["--output-dir", str(output), *TINY, "--teacher", missing])
    with pytest.raises(ValueError, match="Expected a teacher spec"):
        main(["--output-dir", str(output), *TINY, "--teacher", "ViT-L-14"])

    narrow = f"hf:{_saved_random_model(tmp_path / 'narrow', 'mobileclip-tiny')}"
    wide = f"hf:{_saved_random_model(tmp_path / 'wide', 'mobileclip-tiny-wide')}"
    with pytest.raises(ValueError, match=rf"mixes embedding sizes: {re.escape(repr(narrow))} has 32, "
                                         rf"{re.escape(repr(wide))} has 64"):
        main(["--output-dir", str(output), *TINY, "--teacher", narrow, "--teacher", wide])
    assert not output.exists()  # nothing was started or recorded


def test_scales_keep_the_default_within_its_cpu_budget_shape():
    from training.quickstart import SCALES, Settings

    default = Settings(**SCALES["default"])
    full = Settings(**SCALES["full"])
    assert default.rows_per_style is None and full.rows_per_style is None  # all 1,906 emoji of both styles
    assert default.eval_points >= 10 and full.eval_points >= 10  # at least 10 points on each learning curve
    assert full.student_steps > default.student_steps and full.teacher_steps > default.teacher_steps


def test_curve_points_score_the_students_ema_when_asked(fresh_accelerate_state, emoji_subset, tmp_path):
    """With `--ema-decay d` a curve point scores the checkpoint's EMA: after one step, d * initial + (1 - d) * trained
    for every floating tensor (BatchNorm statistics included), the formula of MobileCLIP's EMA."""
    from training.config_loading import CONFIGS_DIR, build_config
    from training.quickstart.scoring import student_at
    from training.quickstart.settings import Settings, model_overrides
    from training.train import train

    decay, settings = 0.9, Settings(seed=3, student_steps=2, ema_decay=0.9)
    train(build_config(CONFIGS_DIR / "tiny-cpu-clip.yaml", {"config_overrides": model_overrides(settings),
        "train_data": str(emoji_subset.parent), "output_dir": str(tmp_path / "runs" / "clip"), "max_steps": 2,
        "train_split": "test", "per_device_batch_size": 8, "save_steps": 1, "report_to": "none", "seed": settings.seed,
        "ema_decay": decay}))
    initial = student_at(0, "clip", settings, tmp_path).state_dict()
    trained = load_file(str(tmp_path / "runs" / "clip" / "checkpoints" / "step_1" / "model.safetensors"))
    scored = student_at(1, "clip", settings, tmp_path).state_dict()
    floating = [key for key, value in initial.items() if value.is_floating_point()]
    assert any(not torch.equal(trained[key], initial[key]) for key in floating)
    for key in floating:
        torch.testing.assert_close(scored[key], decay * initial[key] + (1 - decay) * trained[key], msg=key)
    raw = student_at(1, "clip", Settings(seed=3, student_steps=2), tmp_path).state_dict()
    assert all(torch.equal(raw[key], trained[key]) for key in floating)


def test_a_folder_written_before_a_setting_was_recorded_resumes_under_the_value_it_ran_with(tmp_path):
    """Settings added later (the ensemble, EMA, the text context) are missing from older folders' records: those ran
    with one teacher, no EMA and a 77-token context, so that is what a rerun into them must ask for."""
    import dataclasses
    import json

    import pytest

    from training.quickstart.settings import SETTINGS_FILE, Settings

    recorded = dataclasses.asdict(Settings())
    for key in ("num_teachers", "ema_decay", "text_context_length"):
        recorded.pop(key)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(recorded))
    Settings(text_context_length=77).check_against(tmp_path)
    with pytest.raises(ValueError, match=r"text_context_length: 77 before, 32 now"):
        Settings().check_against(tmp_path)
