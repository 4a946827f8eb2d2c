"""Reinforcement pipeline end to end with tiny random teachers (open_clip and transformers) and a tiny CoCa."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as torch_F  # noqa: E402

from dataset_scripts import reinforce as reinforce_module  # noqa: E402
from dataset_scripts import run_state  # noqa: E402
from dataset_scripts.augmentation import AugmentationParams, apply_augmentation  # noqa: E402
from dataset_scripts.dr_format import load_reinforcement_metadata  # noqa: E402
from dataset_scripts.teachers import Teacher, parse_model_spec  # noqa: E402
from conftest import EMOJI as EMOJI_DIR  # noqa: E402
from conftest import REPO_ROOT, free_port, subprocess_env  # noqa: E402
from torch_threads import single_torch_thread  # noqa: E402,F401 (autouse fixture: one torch thread in this module)

EMOJI = EMOJI_DIR / "twitter.parquet"
VIEW_SIZE = 64

TINY_CONFIGS = {
    "dr-tiny-vit": {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "dr-tiny-coca": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2},
        "custom_text": True,
    },
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny open_clip configs, a saved tiny open_clip teacher and a saved tiny transformers CLIPModel."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("models")
    config_dir = root / "open_clip_configs"
    config_dir.mkdir()
    for name, config in TINY_CONFIGS.items():
        (config_dir / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    vit = open_clip.create_model("dr-tiny-vit", pretrained=None)
    weights = root / "dr-tiny-vit.pt"
    torch.save(vit.state_dict(), weights)

    characters = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)} | {c + "</w>": 256 + i for i, c in enumerate(characters)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    hf_dir = root / "tiny-hf-clip"
    clip.save_pretrained(hf_dir)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(hf_dir)
    return {
        "config_dir": str(config_dir),
        "open_clip_teacher": f"open_clip:dr-tiny-vit:{weights}",
        "open_clip_weights": str(weights),
        "hf_teacher": f"hf:{hf_dir}",
        "hf_dir": str(hf_dir),
        "captioner": "open_clip:dr-tiny-coca:none",
    }


def emoji_rows(count):
    return pq.read_table(EMOJI, columns=["image", "captions", "name"]).slice(0, count).to_pylist()


@pytest.fixture(scope="module")
def faulty_source(tmp_path_factory):
    """Emoji rows plus one corrupt image and one empty caption, in two Parquet files (for streaming units)."""
    root = tmp_path_factory.mktemp("source")
    rows = [{"uid": f"emoji-{i}", "image": r["image"], "caption": r["captions"][0]} for i, r in enumerate(emoji_rows(9))]
    rows.insert(3, {"uid": "corrupt", "image": {"bytes": b"\x89PNG not really", "path": None}, "caption": "broken"})
    rows.insert(6, {"uid": "no-caption", "image": rows[0]["image"], "caption": "   "})
    features = datasets.Features({"uid": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    for i, chunk in enumerate((rows[:6], rows[6:])):
        datasets.Dataset.from_list(chunk, features=features).to_parquet(str(root / f"part-{i}.parquet"))
    return root


def cli_args(output, models, *extra, source=None, captioner=True, teachers=None):
    return [
        "--source", str(source or EMOJI), "--output", str(output),
        "--teachers", teachers or f"{models['open_clip_teacher']},{models['hf_teacher']}",
        "--captioner", models["captioner"] if captioner else "none",
        "--num-augmentations", "3", "--num-synthetic-captions", "2" if captioner else "0",
        "--image-size", str(VIEW_SIZE), "--batch-size", "3", "--shard-size", "4", "--num-workers", "0",
        "--open-clip-model-config", models["config_dir"], "--no-progress", *extra,
    ]


def run(output, models, *extra, **kwargs):
    return reinforce_module.main(cli_args(output, models, *extra, **kwargs))


def cosine(a, b):
    return torch_F.cosine_similarity(torch.as_tensor(a).float(), torch.as_tensor(b).float(), dim=-1)


def test_emoji_dataset_loads_with_declared_shapes_and_true_teacher_embeddings(tmp_path, models):
    from transformers import CLIPModel, CLIPProcessor

    output = tmp_path / "emoji-dr"
    entry = run(output, models, "--split", "train[:7]", "--caption-column", "captions")
    assert entry["complete"] and entry["written"] == 7 and entry["skipped"] == 0

    metadata = load_reinforcement_metadata(output)
    assert [t.dim for t in metadata.teachers] == [24, 16] and metadata.embedding_dim == 40
    assert (metadata.num_augmentations, metadata.num_synthetic_captions) == (3, 2)
    assert metadata.augmentation.size == VIEW_SIZE and metadata.seed == 0
    dataset = datasets.load_dataset(str(output), split="train")
    assert len(dataset) == 7
    assert dataset.features["image_emb"] == datasets.Array2D(shape=(3, 40), dtype="float16")
    assert dataset.features["text_emb"] == datasets.Array2D(shape=(3, 40), dtype="float16")
    assert len(list(datasets.load_dataset(str(output), split="train", streaming=True))) == 7

    # Oracles: each teacher loaded by its own library, fed the replayed view through its own preprocessing.
    vit, _, vit_preprocess = open_clip.create_model_and_transforms(
        "dr-tiny-vit", pretrained=models["open_clip_weights"])
    vit_tokenizer = open_clip.get_tokenizer("dr-tiny-vit")
    clip, processor = CLIPModel.from_pretrained(models["hf_dir"]), CLIPProcessor.from_pretrained(models["hf_dir"])
    sources = {r["name"]: r for r in emoji_rows(7)}
    for row in dataset:
        image_emb, text_emb = np.asarray(row["image_emb"], np.float16), np.asarray(row["text_emb"], np.float16)
        assert row["caption"] in [s["captions"][0] for s in sources.values()]
        assert len(row["syn_captions"]) == 2 and all(isinstance(c, str) and c for c in row["syn_captions"])
        image = row["image"].convert("RGB")
        views = [apply_augmentation(image, AugmentationParams.from_json(p), VIEW_SIZE) for p in row["aug_params"]]
        texts = [str(row["caption"]), *map(str, row["syn_captions"])]
        with torch.no_grad():
            own_images = torch_F.normalize(vit.encode_image(torch.stack([vit_preprocess(v) for v in views])), dim=-1)
            own_texts = torch_F.normalize(vit.encode_text(vit_tokenizer(texts)), dim=-1)
            hf_images = torch_F.normalize(clip.get_image_features(
                **processor(images=views, return_tensors="pt")).pooler_output, dim=-1)
            hf_texts = torch_F.normalize(clip.get_text_features(**processor(
                text=texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            ).pooler_output, dim=-1)
        assert cosine(image_emb[:, :24], own_images).min() > 0.999
        assert cosine(text_emb[:, :24], own_texts).min() > 0.999
        assert cosine(image_emb[:, 24:], hf_images).min() > 0.999
        assert cosine(text_emb[:, 24:], hf_texts).min() > 0.999
        # Each teacher's slice is unit norm (normalised before concatenation).
        np.testing.assert_allclose(np.linalg.norm(image_emb[:, :24].astype(np.float32), axis=1), 1, atol=2e-3)


def read_output(output):
    table = pa.concat_tables(pq.read_table(p) for p in sorted((Path(output) / "data").glob("*.parquet")))
    return sorted(table.to_pylist(), key=lambda r: r["uid"])


def assert_same_dataset(first, second):
    rows_a, rows_b = read_output(first), read_output(second)
    assert [r["uid"] for r in rows_a] == [r["uid"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in ("caption", "syn_captions", "aug_params", "image"):
            assert a[key] == b[key], (a["uid"], key)
        for key in ("image_emb", "text_emb"):
            np.testing.assert_array_equal(np.asarray(a[key], np.float16), np.asarray(b[key], np.float16))


@pytest.mark.slow
def test_bad_samples_are_skipped_and_reported_and_crashes_resume_identically(tmp_path, models, faulty_source,
                                                                             monkeypatch):
    source = str(faulty_source / "*.parquet")
    reference = tmp_path / "reference"
    entry = run(reference, models, "--shard-size", "2", source=source, teachers=models["open_clip_teacher"])
    assert entry["complete"] and entry["written"] == 9 and entry["source_rows"] == 11
    assert entry["skipped_by_reason"] == {"undecodable_image": 1, "empty_caption": 1}
    report = json.loads((reference / "reinforce_report.json").read_text())["train"]
    skipped = {s["uid"]: s for s in report["skipped_samples"]}
    assert skipped["corrupt"]["reason"] == "undecodable_image" and "Error" in skipped["corrupt"]["error"]
    assert skipped["no-caption"]["reason"] == "empty_caption"
    assert {r["uid"] for r in read_output(reference)} == {f"emoji-{i}" for i in range(9)}

    # Crash 1: the run dies after two parts were written. Crash 2: between a part's Parquet and its state file.
    crashed = tmp_path / "crashed"
    original_write, original_state = run_state.write_parquet_shard, run_state.write_json_atomic
    calls = {"parquet": 0}

    def failing_write(examples, metadata, path):
        calls["parquet"] += 1
        if calls["parquet"] == 3:
            raise RuntimeError("simulated crash")
        return original_write(examples, metadata, path)

    monkeypatch.setattr(run_state, "write_parquet_shard", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, models, "--shard-size", "2", source=source, teachers=models["open_clip_teacher"])
    assert len(list((crashed / "data").glob("*.parquet"))) == 2 and not (crashed / "README.md").exists()
    monkeypatch.setattr(run_state, "write_parquet_shard", original_write)

    def failing_state(path, payload):
        if "unit" in payload and len(list(path.parent.glob("*.json"))) == 3:
            raise RuntimeError("crash before the state file")
        return original_state(path, payload)

    monkeypatch.setattr(run_state, "write_json_atomic", failing_state)
    with pytest.raises(RuntimeError, match="crash before"):
        run(crashed, models, "--shard-size", "2", source=source, teachers=models["open_clip_teacher"])
    monkeypatch.setattr(run_state, "write_json_atomic", original_state)
    assert len(list((crashed / "data").glob("*.parquet"))) == 4  # the 4th part's Parquet has no state file
    entry = run(crashed, models, "--shard-size", "2", source=source, teachers=models["open_clip_teacher"])
    assert entry["complete"] and entry["written"] == 9 and entry["skipped"] == 2
    assert_same_dataset(reference, crashed)
    rerun = run(crashed, models, "--shard-size", "2", source=source, teachers=models["open_clip_teacher"])
    assert rerun["written"] == 9 and rerun["timing"]["samples"] == 0  # nothing left to do


STREAMING = ["--streaming", "--shard-size", "2", "--batch-size", "1"]


@pytest.fixture(scope="module")
def streaming_reference(tmp_path_factory, models, faulty_source):
    """An uninterrupted single-process streaming run over the two-file source."""
    output = tmp_path_factory.mktemp("streaming") / "reference"
    entry = run(output, models, *STREAMING, source=str(faulty_source / "*.parquet"),
                teachers=models["open_clip_teacher"])
    assert entry["units"] == 2 and entry["written"] == 9  # one unit per source file when streaming
    return output


@pytest.mark.slow
def test_killed_streaming_run_resumes_to_the_uninterrupted_result(tmp_path, models, faulty_source,
                                                                  streaming_reference):
    source = str(faulty_source / "*.parquet")
    killed = tmp_path / "killed"
    argv = cli_args(killed, models, *STREAMING, source=source, teachers=models["open_clip_teacher"])
    process = subprocess.Popen([sys.executable, "-m", "dataset_scripts.reinforce", *argv], cwd=REPO_ROOT,
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    states = killed / ".reinforce_state" / "train"
    deadline = time.monotonic() + 120
    while process.poll() is None and not list(states.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(states.glob("*.json")), process.stderr.read().decode()[-2000:]

    entry = run(killed, models, *STREAMING, source=source, teachers=models["open_clip_teacher"])
    assert entry["complete"] and entry["written"] == 9
    assert_same_dataset(streaming_reference, killed)


@pytest.mark.slow
def test_two_processes_split_the_units_and_match_one_process(tmp_path, models, faulty_source, streaming_reference):
    port = free_port()
    output = tmp_path / "two-processes"
    argv = cli_args(output, models, *STREAMING, source=str(faulty_source / "*.parquet"),
                    teachers=models["open_clip_teacher"])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "dataset_scripts.reinforce", *argv],
        cwd=REPO_ROOT, env={**subprocess_env(), "ACCELERATE_USE_CPU": "true"}, capture_output=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    states = [json.loads(p.read_text()) for p in (output / ".reinforce_state" / "train").glob("*.json")]
    assert sorted({s["unit"] for s in states}) == [0, 1]
    assert json.loads((output / "reinforce_report.json").read_text())["train"]["complete"]
    assert (output / "README.md").exists()
    assert_same_dataset(streaming_reference, output)


def test_the_command_line_and_the_python_config_have_the_same_defaults():
    required = {"source": "s.parquet", "output": "out", "teachers": "hf:t"}
    parsed = reinforce_module.parse_config([f"--{key}={value}" for key, value in required.items()])
    assert parsed == reinforce_module.ReinforceConfig(**required)
    with pytest.raises(TypeError):  # keyword arguments only: the fields' order is not an interface
        reinforce_module.ReinforceConfig("s.parquet", "out", "hf:t")
    with pytest.raises(ValueError, match="--dtype must be one of"):
        reinforce_module.check_config(reinforce_module.ReinforceConfig(**required, dtype="half"))


def test_invalid_requests_fail_at_start_with_clear_messages(tmp_path, models):
    teacher = models["open_clip_teacher"]
    with pytest.raises(ValueError, match="Expected a teacher spec"):
        run(tmp_path / "a", models, teachers="clip:ViT-B-32")
    with pytest.raises(ValueError, match="Expected a captioner spec"):
        reinforce_module.main(cli_args(tmp_path / "x", models, teachers=teacher) + ["--captioner", "coca"])
    with pytest.raises(ValueError, match=r"no column 'caption' \(--caption-column\); available columns: "):
        run(tmp_path / "b", models, "--split", "train[:2]", teachers=teacher, captioner=False)
    with pytest.raises(ValueError, match="Cannot load teacher 'open_clip:no-such-arch:none'"):
        run(tmp_path / "c", models, "--split", "train[:2]", "--caption-column", "name",
            teachers="open_clip:no-such-arch:none", captioner=False)
    with pytest.raises(ValueError, match="needs a captioner"):
        reinforce_module.main(cli_args(tmp_path / "y", models, "--num-synthetic-captions", "2", teachers=teacher,
                                       captioner=False))

    output = tmp_path / "d"
    run(output, models, "--split", "train[:2]", "--caption-column", "name", teachers=teacher, captioner=False)
    with pytest.raises(ValueError, match="reinforced with other settings.*teachers"):
        run(output, models, "--split", "train[:2]", "--caption-column", "name", teachers=models["hf_teacher"],
            captioner=False)


def test_teacher_with_mismatched_dimensions_is_rejected():
    class Mismatched(Teacher):
        image_size, image_mean, image_std = 8, (0.0,) * 3, (1.0,) * 3

        def _image_features(self, pixel_values):
            return torch.ones(pixel_values.shape[0], 5)

        def _text_features(self, texts):
            return torch.ones(len(texts), 7)

    with pytest.raises(ValueError, match="image embeddings have 5 dims but text embeddings 7"):
        Mismatched("fake:teacher", torch.device("cpu"), torch.float32)._probe_dim()
    assert parse_model_spec("open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14").name == "hf-hub:apple/DFN2B-CLIP-ViT-L-14"
    assert parse_model_spec("open_clip:ViT-L-14:openai").pretrained == "openai"


def test_teacher_views_are_normalised_as_the_models_processor_does():
    """At the teacher's own input size resizing and cropping change nothing, so a teacher's input from uint8 views
    must be exactly what the model's image processor makes of the same image (rescale, then its mean/std)."""
    from PIL import Image

    from modeling_mobileclip import MobileCLIPProcessor

    image_processor = MobileCLIPProcessor.from_variant("mobileclip2-s3").image_processor  # OpenAI mean/std
    size = image_processor.crop_size["height"]
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    expected = image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")["pixel_values"]

    class ProcessorSized(Teacher):
        image_size, image_mean, image_std = size, tuple(image_processor.image_mean), tuple(image_processor.image_std)

    teacher = ProcessorSized("fake:teacher", torch.device("cpu"), torch.float32)
    views = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    torch.testing.assert_close(teacher.preprocess_views(views), expected, rtol=0, atol=1e-6)


def test_push_to_hub_uploads_data_card_and_report_only(tmp_path, monkeypatch):
    """What reaches the Hub is decided by huggingface_hub's own filter over the folder, applied to the patterns we
    pass: the resume state and the leftovers of interrupted atomic writes stay local."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from dataset_scripts.hub_push import push_reinforced_dataset

    published = ["README.md", "reinforce_report.json", "data/train-00000-0000.parquet"]
    local_only = [".reinforce_state/metadata.json", ".reinforce_state/train/00000-0000.json",
                  "reinforce_report.json.tmp", "data/train-00001-0000.parquet.tmp", "data/.tmp-k2j4/out/shard.parquet"]
    for name in published + local_only:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(
        ("create", repo_id, kw)))

    def fake_upload(self, folder_path, ignore_patterns, **kw):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append(("upload", sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns)), kw))
        return "https://huggingface.co/datasets/someone/my-dr/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    url = push_reinforced_dataset(tmp_path, "someone/my-dr")
    assert calls[0] == ("create", "someone/my-dr", {"repo_type": "dataset", "private": None, "exist_ok": True})
    _, uploaded, upload = calls[1]
    assert uploaded == sorted(published)
    assert upload["repo_id"] == "someone/my-dr" and upload["repo_type"] == "dataset"
    assert url == "https://huggingface.co/datasets/someone/my-dr/commit/0"


def test_hf_teacher_adapter_matches_our_mobileclip_model(tmp_path):
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor

    from dataset_scripts.teachers import load_teacher

    config = MobileCLIPConfig.from_variant("mobileclip-tiny")
    model = MobileCLIPModel(config).eval()
    processor = MobileCLIPProcessor.from_variant("mobileclip-tiny")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    teacher = load_teacher(f"hf:{tmp_path}", torch.device("cpu"), torch.float32)
    assert teacher.image_size == config.image_size and teacher.image_mean == tuple(config.image_mean)
    views = torch.randint(0, 256, (2, 3, config.image_size, config.image_size), dtype=torch.uint8)
    texts = ["a cat on a mat", "two dogs"]
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        own_images = torch_F.normalize(model.encode_image((views / 255 - mean) / std), dim=-1)
        own_texts = torch_F.normalize(model.encode_text(processor.tokenizer(texts, return_tensors="pt")["input_ids"]),
                                      dim=-1)
    torch.testing.assert_close(teacher.encode_images(views), own_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.encode_texts(texts), own_texts, atol=1e-5, rtol=0)


def test_hf_image_to_text_captioner_is_reproducible(tmp_path):
    from PIL import Image
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from dataset_scripts.captioners import first_sentence, load_captioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "red", "on", "mat", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).save_pretrained(tmp_path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(str(tmp_path / "vocab.txt"))).save_pretrained(tmp_path)
    captioner = load_captioner(f"hf:{tmp_path}", torch.device("cpu"), torch.float32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    pixels = torch.stack([captioner.prepare_image(image)] * 2)
    assert pixels.shape == (2, 3, 32, 32)
    captions = captioner.generate(pixels, 3, seed=11)
    assert [len(c) for c in captions] == [3, 3] and all(isinstance(t, str) for c in captions for t in c)
    assert captioner.generate(pixels, 3, seed=11) == captions
    assert captioner.generate(pixels, 3, seed=12) != captions
    assert first_sentence("a cat on a mat. it sleeps.") == "a cat on a mat"
    assert first_sentence(" . only after") == ". only after"


# --- learned logit scales and the column:NAME captioner ----------------------------------------------------------


@pytest.fixture(scope="module")
def scaled_teachers(tmp_path_factory, models):
    """Teachers whose saved logit_scale is distinctive (not CLIP's initial ln(1/0.07)), so a recorded scale cannot
    match by accident: the tiny open_clip ViT with ln(37.5) and a mobileclip-tiny folder with ln(14.6)."""
    import math

    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor

    root = tmp_path_factory.mktemp("scaled-teachers")
    state = torch.load(models["open_clip_weights"])
    state["logit_scale"] = torch.tensor(math.log(37.5))
    torch.save(state, root / "vit-37.5.pt")
    torch.manual_seed(3)
    mobileclip = MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")).eval()
    with torch.no_grad():
        mobileclip.logit_scale.fill_(math.log(14.6))
    mobileclip.save_pretrained(root / "mobileclip")
    MobileCLIPProcessor.from_variant("mobileclip-tiny").save_pretrained(root / "mobileclip")
    return {"open_clip": f"open_clip:dr-tiny-vit:{root / 'vit-37.5.pt'}", "open_clip_weights": root / "vit-37.5.pt",
            "mobileclip": f"hf:{root / 'mobileclip'}", "mobileclip_dir": root / "mobileclip"}


def test_teachers_read_their_learned_logit_scale(models, scaled_teachers):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    from dataset_scripts.teachers import load_teacher

    cpu = torch.device("cpu")
    # Oracles: each library's own model attribute (open_clip, transformers) or the saved tensor itself.
    random_vit = open_clip.create_model("dr-tiny-vit", pretrained=None)
    assert load_teacher("open_clip:dr-tiny-vit:none", cpu, torch.float32).logit_scale == pytest.approx(
        random_vit.logit_scale.exp().item(), rel=1e-6)
    saved_vit = open_clip.create_model("dr-tiny-vit", pretrained=str(scaled_teachers["open_clip_weights"]))
    assert saved_vit.logit_scale.exp().item() == pytest.approx(37.5, rel=1e-6)
    assert load_teacher(scaled_teachers["open_clip"], cpu, torch.float32).logit_scale == pytest.approx(
        saved_vit.logit_scale.exp().item(), rel=1e-6)
    saved_scale = load_file(str(scaled_teachers["mobileclip_dir"] / "model.safetensors"))["logit_scale"].exp()
    assert saved_scale.item() == pytest.approx(14.6, rel=1e-6)
    assert load_teacher(scaled_teachers["mobileclip"], cpu, torch.float32).logit_scale == pytest.approx(
        saved_scale.item(), rel=1e-6)
    clip = CLIPModel.from_pretrained(models["hf_dir"])
    assert load_teacher(models["hf_teacher"], cpu, torch.float32).logit_scale == pytest.approx(
        clip.logit_scale.exp().item(), rel=1e-6)

    class NoScale(Teacher):  # a teacher model without logit_scale records none
        pass

    assert NoScale("fake:teacher", cpu, torch.float32).logit_scale is None


# (captions cell, expected caption, expected synthetic captions with K = 3): extra entries beyond K are dropped,
# empty entries skipped, a single caption leaves no synthetic one.
COLUMN_ROWS = [
    (["gt zero", "zero a", "zero b", "zero c", "zero d"], "gt zero", ["zero a", "zero b", "zero c"]),
    (["gt one", "", "one a"], "gt one", ["one a"]),
    (["only caption"], "only caption", []),
    (["", "  ", "gt three", "three a", "three b"], "gt three", ["three a", "three b"]),
]


@pytest.fixture(scope="module")
def list_caption_source(tmp_path_factory):
    """Emoji images with a list caption column of varying lengths, an `extra` list column and an int column."""
    images = [r["image"] for r in emoji_rows(len(COLUMN_ROWS))]
    rows = [{"uid": f"row-{i}", "image": image, "captions": captions, "title": captions[-1],
             "extra": ["x", "", f"y{i}"], "count": i}
            for i, (image, (captions, _, _)) in enumerate(zip(images, COLUMN_ROWS))]
    path = tmp_path_factory.mktemp("list-captions") / "source.parquet"
    datasets.Dataset.from_list(rows, features=datasets.Features({
        "uid": datasets.Value("string"), "image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
        "title": datasets.Value("string"), "extra": datasets.List(datasets.Value("string")),
        "count": datasets.Value("int64"),
    })).to_parquet(str(path))
    return path


def test_column_captioner_fills_synthetic_slots_with_the_datasets_own_captions(
        tmp_path, models, scaled_teachers, list_caption_source):
    from modeling_mobileclip import MobileCLIPModel, MobileCLIPProcessor

    output = tmp_path / "column-dr"
    argv = cli_args(output, models, source=list_caption_source, teachers=f"{scaled_teachers['open_clip']},"
                    f"{scaled_teachers['mobileclip']}", captioner=False)
    argv[argv.index("--captioner") + 1] = "column:captions"
    argv[argv.index("--num-synthetic-captions") + 1] = "3"
    entry = reinforce_module.main([*argv, "--caption-column", "captions"])
    assert entry["complete"] and entry["written"] == len(COLUMN_ROWS) and entry["skipped"] == 0

    metadata = load_reinforcement_metadata(output)
    assert metadata.captioner == "column:captions" and metadata.num_synthetic_captions == 3
    assert metadata.teacher_logit_scales == pytest.approx([37.5, 14.6], rel=1e-6)
    assert "| learned logit scale |" in (output / "README.md").read_text()

    vit = open_clip.create_model("dr-tiny-vit", pretrained=str(scaled_teachers["open_clip_weights"])).eval()
    vit_tokenizer = open_clip.get_tokenizer("dr-tiny-vit")
    mobileclip = MobileCLIPModel.from_pretrained(scaled_teachers["mobileclip_dir"]).eval()
    mobileclip_tokenizer = MobileCLIPProcessor.from_pretrained(scaled_teachers["mobileclip_dir"]).tokenizer
    for row in read_output(output):
        _, caption, synthetic = COLUMN_ROWS[int(row["uid"].split("-")[1])]
        assert row["caption"] == caption and row["syn_captions"] == synthetic
        text_emb = np.asarray(row["text_emb"], np.float32)
        assert text_emb.shape == (4, 24 + 32)
        used = 1 + len(synthetic)
        assert not text_emb[used:].any()  # the unused rows are zero-filled
        texts = [caption, *synthetic]
        with torch.no_grad():  # oracle: each teacher embedding the strings itself
            own = torch_F.normalize(vit.encode_text(vit_tokenizer(texts)), dim=-1)
            ids = mobileclip_tokenizer(texts, return_tensors="pt")["input_ids"]
            own_mobileclip = torch_F.normalize(mobileclip.encode_text(ids), dim=-1)
        assert cosine(text_emb[:used, :24], own).min() > 0.999
        assert cosine(text_emb[:used, 24:], own_mobileclip).min() > 0.999

    # NAME other than the caption column: all of its non-empty entries, the caption column untouched.
    other = tmp_path / "extra-dr"
    argv = cli_args(other, models, source=list_caption_source, teachers=models["open_clip_teacher"], captioner=False)
    argv[argv.index("--captioner") + 1] = "column:extra"
    argv[argv.index("--num-synthetic-captions") + 1] = "2"
    reinforce_module.main([*argv, "--caption-column", "title"])
    for row in read_output(other):
        index = int(row["uid"].split("-")[1])
        assert row["caption"] == COLUMN_ROWS[index][0][-1].strip() and row["syn_captions"] == ["x", f"y{index}"]


def test_column_captioner_is_validated_at_start(tmp_path, models, list_caption_source):
    def run_column(spec, *extra, caption_column="captions", k="3"):
        argv = cli_args(tmp_path / "out", models, source=list_caption_source, teachers="open_clip:no-such-arch:none",
                        captioner=False)
        argv[argv.index("--captioner") + 1] = spec
        argv[argv.index("--num-synthetic-captions") + 1] = k
        reinforce_module.main([*argv, "--caption-column", caption_column, *extra])

    # All of these fail before the (unloadable) teacher would be loaded.
    with pytest.raises(ValueError, match=r"no column 'missing' \(--captioner column:missing\); available columns: "
                                         r"\['captions', 'count', 'extra', 'image', 'title', 'uid'\]"):
        run_column("column:missing")
    with pytest.raises(ValueError, match=r"Column 'count' \(--captioner column:count\) is .*int64.*expected strings "
                                         r"or lists of strings; available columns: \['captions'"):
        run_column("column:count")
    with pytest.raises(ValueError, match=r"column:title reuses the caption column, but 'title' holds one string"):
        run_column("column:title", caption_column="title")
    with pytest.raises(ValueError, match=r"column:captions needs --num-synthetic-captions K >= 1 \(got 0\)"):
        run_column("column:captions", k="0")
    with pytest.raises(ValueError, match=r"names no column"):
        run_column("column:")
    argv = cli_args(tmp_path / "no-k", models, source=list_caption_source, teachers="open_clip:no-such-arch:none",
                    captioner=False)
    flag = argv.index("--num-synthetic-captions")
    del argv[flag: flag + 2]  # K not given at all
    argv[argv.index("--captioner") + 1] = "column:captions"
    with pytest.raises(ValueError, match=r"needs --num-synthetic-captions K >= 1 \(got None\)"):
        reinforce_module.main(argv)


def test_output_started_before_logit_scales_were_recorded_still_resumes(tmp_path, models):
    output = tmp_path / "old-output"
    args = ("--split", "train[:2]", "--caption-column", "name")
    run(output, models, *args, teachers=models["open_clip_teacher"], captioner=False)
    state = output / ".reinforce_state" / "metadata.json"
    metadata = json.loads(state.read_text())
    assert metadata["teachers"][0]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's initial scale
    del metadata["teachers"][0]["logit_scale"]  # what runs before this field existed wrote
    state.write_text(json.dumps(metadata))
    entry = run(output, models, *args, teachers=models["open_clip_teacher"], captioner=False)
    assert entry["complete"] and entry["written"] == 2
    assert load_reinforcement_metadata(output).teacher_logit_scales == pytest.approx([1 / 0.07], rel=1e-6)
