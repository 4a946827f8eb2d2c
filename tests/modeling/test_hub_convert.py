"""`python -m modeling_mobileclip.convert --checkpoint HUB_ID_OR_PATH` offline: Hub ids resolve through a Hugging Face
cache written here in the real layout (`models--ORG--NAME/{blobs,refs/main,snapshots/<commit>/FILE}`), under the
file names the official repos use; `--source`/`--variant` detection from keys and shapes for all 13 variants (meta
tensors: shapes without memory); `--all`; bad input fails naming what was expected and writes nothing."""

import json
import shutil

import huggingface_hub
import open_clip
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save_file

from hub_helpers import write_cached_repo
from model_helpers import golden_state_dict, max_relative_error, perturb_
from modeling_mobileclip import VARIANTS, MobileCLIPModel
from modeling_mobileclip.convert import (
    OFFICIAL_CHECKPOINTS,
    CheckpointMismatchError,
    detect_source,
    detect_variant,
    main as convert_main,
)


GOLDEN_TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "these tests must not reach the Hub"
    return cache


def golden_io(golden_dir, variant):
    return load_file(str(golden_dir / f"apple_mobileclip_{variant}.io.safetensors"))


def assert_card(folder, license_name, row_in1k, base_model):
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert data.license == "other" and data.license_name == license_name and data.base_model == base_model
    model_index = data.to_dict()["model-index"]
    name, results = model_index_to_eval_results(model_index)
    imagenet = [r for r in results if r.dataset_type == "imagenet-1k"]
    assert len(imagenet) == 1 and imagenet[0].metric_value == row_in1k
    assert "2311.17049" in card.text and "```bibtex" in card.text and "trust_remote_code=True" in card.text
    return card


def load_embeddings(folder, pixel_values, input_ids):
    model = MobileCLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model.encode_image(pixel_values), model.encode_text(input_ids)


# --- convert by Hub id -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_apple_and_timm_repos_by_hub_id_and_all(golden_dir, hub_cache, tmp_path):
    """apple/MobileCLIP-S0 (`mobileclip_s0.pt`) and apple/mobileclip_s0_timm (`model.safetensors` + the text tower of
    apple/MobileCLIP-S0) give Apple's golden outputs; `--all` converts both from the cache."""
    apple = golden_state_dict(golden_dir, "s0")
    apple_file = tmp_path / "mobileclip_s0.pt"
    torch.save(apple, apple_file)
    tower = timm.create_model("fastvit_mci0", pretrained=False, num_classes=512).eval()
    tower.load_state_dict(timm.models.fastvit.checkpoint_filter_fn(apple, tower))
    timm_file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(timm_file))
    write_cached_repo(hub_cache, "apple/MobileCLIP-S0", {"mobileclip_s0.pt": apple_file})
    write_cached_repo(hub_cache, "apple/mobileclip_s0_timm", {"model.safetensors": timm_file})

    io = golden_io(golden_dir, "s0")
    pixels = io["pixel_values_uint8"].float() / 255
    out = tmp_path / "s0"
    convert_main(["--checkpoint", "apple/MobileCLIP-S0", "--output", str(out)])
    image, text = load_embeddings(out, pixels, io["input_ids"])
    torch.testing.assert_close(image, io["image_embeds"], **GOLDEN_TOL)
    torch.testing.assert_close(text, io["text_embeds"], **GOLDEN_TOL)
    assert_card(out, "apple-ascl", 67.79, "apple/MobileCLIP-S0")

    out_timm = tmp_path / "s0_timm"
    convert_main(["--checkpoint", "apple/mobileclip_s0_timm", "--output", str(out_timm)])
    image, text = load_embeddings(out_timm, pixels, io["input_ids"])
    with torch.no_grad():
        assert max_relative_error(image, tower(pixels)) <= 1e-5
    torch.testing.assert_close(text, io["text_embeds"], **GOLDEN_TOL)
    assert_card(out_timm, "apple-ascl", 67.79, "apple/mobileclip_s0_timm")

    converted = convert_main(["--all", "--output", str(tmp_path / "all")])
    assert sorted(p.name for p in converted) == ["MobileCLIP-S0", "mobileclip_s0_timm"]
    for folder in converted:
        image, _ = load_embeddings(folder, pixels, io["input_ids"])
        torch.testing.assert_close(image, io["image_embeds"], **GOLDEN_TOL)
    # --all over a plain folder: files named as Apple names them.
    plain = tmp_path / "downloads"
    plain.mkdir()
    shutil.copyfile(apple_file, plain / "mobileclip_s0.pt")
    (plain / "notes.txt").write_text("not a checkpoint")
    converted = convert_main(["--all", str(plain), "--output", str(tmp_path / "from_folder")])
    assert [p.name for p in converted] == ["mobileclip_s0"]
    assert json.loads((converted[0] / "config.json").read_text())["variant"] == "mobileclip-s0"


@pytest.mark.slow
def test_open_clip_repo_by_hub_id_matches_open_clip(hub_cache, tmp_path):
    """timm/MobileCLIP2-S0-OpenCLIP (`open_clip_model.safetensors`, random weights) against open_clip itself."""
    torch.manual_seed(0)
    reference = perturb_(open_clip.create_model("MobileCLIP2-S0", pretrained=None)).eval()
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": {"embed_dim": 512}}))
    write_cached_repo(hub_cache, "timm/MobileCLIP2-S0-OpenCLIP",
                      {"open_clip_model.safetensors": weights, "open_clip_config.json": config})

    out = tmp_path / "mc2-s0"
    convert_main(["--checkpoint", "timm/MobileCLIP2-S0-OpenCLIP", "--output", str(out)])
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.tokenize(["a photo of a dog", "MobileCLIP2 on a phone"])
    image, text = load_embeddings(out, images, tokens)
    with torch.no_grad():
        assert max_relative_error(image, reference.encode_image(images)) <= 1e-5
        assert max_relative_error(text, reference.encode_text(tokens)) <= 1e-5
    assert json.loads((out / "config.json").read_text())["variant"] == "mobileclip2-s0"
    card = assert_card(out, "apple-amlr", 71.53, "timm/MobileCLIP2-S0-OpenCLIP")
    assert "2508.20691" in card.text


# --- detection of all 13 variants ------------------------------------------------------------------------------------


def meta_state_dict(tensors):
    return {key: torch.empty(shape, device="meta") for key, shape in tensors}


def apple_meta(golden_dir, name):
    manifest = json.loads((golden_dir / f"apple_mobileclip_{name}.manifest.json").read_text())
    return meta_state_dict((key, shape) for key, shape, _ in manifest["tensors"])


def open_clip_meta(name):
    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
    return model.state_dict()


# (our variant, how the source stores it, the hint a repo id / Apple file name gives).
APPLE_CASES = [("mobileclip-s0", "s0"), ("mobileclip-s1", "s1"), ("mobileclip-s2", "s2"), ("mobileclip-b", "b")]
OPEN_CLIP_CASES = [  # v1 S3/S4/L-14 were released in open_clip's layout with MobileCLIP2's architectures
    ("mobileclip-s1", "MobileCLIP-S1", "apple/MobileCLIP-S1-OpenCLIP"),
    ("mobileclip-s2", "MobileCLIP-S2", "apple/MobileCLIP-S2-OpenCLIP"),
    ("mobileclip-b", "MobileCLIP-B", "apple/MobileCLIP-B-LT-OpenCLIP"),
    ("mobileclip-s3", "MobileCLIP2-S3", "mobileclip_s3.pt"),
    ("mobileclip-s4", "MobileCLIP2-S4", "apple/MobileCLIP-S4"),
    ("mobileclip-l-14", "MobileCLIP2-L-14", "mobileclip_l14.pt"),
    ("mobileclip2-s0", "MobileCLIP2-S0", None),  # unique architecture: no hint needed
    ("mobileclip2-s2", "MobileCLIP2-S2", "timm/MobileCLIP2-S2-OpenCLIP"),
    ("mobileclip2-b", "MobileCLIP2-B", "mobileclip2_b.pt"),
    ("mobileclip2-s3", "MobileCLIP2-S3", "apple/MobileCLIP2-S3"),
    ("mobileclip2-s4", "MobileCLIP2-S4", "mobileclip2_s4.pt"),
    ("mobileclip2-l-14", "MobileCLIP2-L-14", "timm/MobileCLIP2-L-14-OpenCLIP"),
]


@pytest.mark.slow  # ~15 s on 2 cores: 13 x 13 meta-device conversions
def test_detects_all_13_variants_from_keys_and_shapes(golden_dir):
    detected = {}
    for variant, name in APPLE_CASES:
        state_dict = apple_meta(golden_dir, name)
        assert detect_source(state_dict) == "apple"
        detected[variant] = detect_variant(state_dict, "apple")  # Apple's layout exists for v1 only: no hint
    open_clip_dicts = {}
    for variant, name, hint in OPEN_CLIP_CASES:
        state_dict = open_clip_dicts.setdefault(name, open_clip_meta(name))
        assert detect_source(state_dict) == "open_clip"
        found = detect_variant(state_dict, "open_clip", hint=hint)
        assert found == variant, (name, hint, found)
        detected.setdefault(variant, found)
    assert sorted(detected) == sorted(VARIANTS) and len(VARIANTS) == 13

    # timm image towers: the tower alone, and with the text tower of an open_clip checkpoint.
    with torch.device("meta"):
        tower = timm.create_model("fastvit_mci0", pretrained=False, num_classes=512)
    assert detect_source(tower.state_dict()) == "timm"
    text = open_clip_dicts["MobileCLIP2-S0"]
    assert detect_variant(tower.state_dict(), "timm", text_state_dict=text) == "mobileclip2-s0"
    assert detect_variant(tower.state_dict(), "timm", hint="apple/mobileclip_s0_timm") == "mobileclip-s0"


def test_ambiguous_and_foreign_state_dicts_name_the_candidates(golden_dir):
    with pytest.raises(CheckpointMismatchError, match=r"mobileclip-s3, mobileclip2-s3.*--variant"):
        detect_variant(open_clip_meta("MobileCLIP2-S3"), "open_clip", checkpoint="x.safetensors")
    resnet = meta_state_dict([("conv1.weight", (64, 3, 7, 7)), ("fc.weight", (1000, 2048))])
    with pytest.raises(CheckpointMismatchError, match=r"not a MobileCLIP checkpoint: expected Apple .*open_clip"):
        detect_source(resnet)
    # Apple keys of a variant that does not exist: the closest variant and how far it is.
    broken = apple_meta(golden_dir, "s0")
    broken["image_encoder.model.head.proj"] = torch.empty(1024, 999, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"fits no MobileCLIP variant.*closest, mobileclip-s0"):
        detect_variant(broken, "apple")


# --- bad input -------------------------------------------------------------------------------------------------------


def test_bad_hub_ids_and_files_fail_naming_what_was_expected_and_write_nothing(hub_cache, tmp_path):
    # A cached repo whose file is not MobileCLIP (a ResNet under timm's file name).
    resnet = tmp_path / "model.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, str(resnet))
    write_cached_repo(hub_cache, "someone/resnet", {"model.safetensors": resnet})
    out = tmp_path / "out"
    expected = r"not a MobileCLIP checkpoint: expected Apple `mobileclip_\*\.pt`"
    with pytest.raises(CheckpointMismatchError, match=expected):
        convert_main(["--checkpoint", "someone/resnet", "--output", str(out)])
    # An official repo id whose file is the same foreign checkpoint.
    write_cached_repo(hub_cache, "apple/mobileclip_s1_timm", {"model.safetensors": resnet})
    with pytest.raises(CheckpointMismatchError, match="not a MobileCLIP checkpoint"):
        convert_main(["--checkpoint", "apple/mobileclip_s1_timm", "--output", str(out)])
    # A repo that is not in the cache (offline): the files tried and the official repos.
    with pytest.raises(FileNotFoundError, match=r"tried mobileclip_s2\.pt.*apple/MobileCLIP-S0.*HF_HUB_CACHE"):
        convert_main(["--checkpoint", "apple/MobileCLIP-S2", "--output", str(out)])
    # A local file that is not a checkpoint at all.
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint")
    with pytest.raises(OSError, match="notes.pt"):
        convert_main(["--checkpoint", str(text_file), "--output", str(out)])
    # --all where nothing official is cached.
    with pytest.raises(FileNotFoundError, match="found no official MobileCLIP checkpoint"):
        convert_main(["--all", str(tmp_path / "hf_cache"), "--output", str(out)])
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_failure_while_writing_leaves_no_folder(golden_dir, hub_cache, tmp_path, monkeypatch):
    from modeling_mobileclip.convert import conversion as convert

    checkpoint = tmp_path / "mobileclip_s0.pt"
    torch.save(golden_state_dict(golden_dir, "s0"), checkpoint)
    out = tmp_path / "out"

    def broken_card(*args, **kwargs):
        assert (tmp_path / "out.tmp" / "model.safetensors").is_file(), "the weights were staged"
        raise RuntimeError("card failed")

    monkeypatch.setattr(convert, "model_card_for", broken_card)
    with pytest.raises(RuntimeError, match="card failed"):
        convert_main(["--checkpoint", str(checkpoint), "--output", str(out)])
    assert not out.exists() and not (tmp_path / "out.tmp").exists()


def test_official_table_covers_every_variant_and_the_three_sources():
    variants = {c.variant for c in OFFICIAL_CHECKPOINTS}
    assert variants == set(VARIANTS)
    assert {c.source for c in OFFICIAL_CHECKPOINTS} == {"apple", "open_clip", "timm"}
    by_repo = {c.repo_id: c for c in OFFICIAL_CHECKPOINTS}
    assert by_repo["apple/MobileCLIP-S0"].filenames == ("mobileclip_s0.pt",)
    assert by_repo["apple/MobileCLIP-B-LT"].row == "MobileCLIP-B (LT)"
    assert by_repo["timm/MobileCLIP2-S4-OpenCLIP"].filenames[0] == "open_clip_model.safetensors"
    assert by_repo["apple/mobileclip_b_timm"].text_repo == "apple/MobileCLIP-B"
