"""Every fenced block of README.md, parsed from the README (an edited README is what runs) and mapped by `BLOCKS` to
its test and to "as written" or the overrides and why. Commands run offline and in-process in a scratch folder laid
out like the repository root: `python -m M ARGS` calls `M.main(ARGS)`, `accelerate launch [OPTIONS] SCRIPT|-m M ARGS`
checks OPTIONS with accelerate's parser and runs the 1-process CPU equivalent; commands that cannot run here
(downloads, multi-node launches) are checked by their own parsers."""

import ast
import contextlib
import importlib
import importlib.metadata
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from accelerate.commands.launch import launch_command_parser
from accelerate.state import AcceleratorState, GradientState
from click.testing import CliRunner
from packaging.requirements import Requirement
from safetensors.torch import load_file, save_file

from conftest import EMOJI, REPO_ROOT, subprocess_env
from torch_threads import single_torch_thread  # noqa: F401 (fixture)
from train_helpers import build_reinforced_dataset
from training.batch_sizes import BatchSizes, resolve_batch_sizes
from training.config_loading import parse_args

README = REPO_ROOT / "README.md"
TITLE = "mobileclip-hf: MobileCLIP and MobileCLIP2, Hugging Face-native"
APPLE = "Read Apple's DataCompDR | hf download apple/DataCompDR-12M"
EXAMPLE = "Example: the emoji set with a tiny trained model | accelerate launch training/train.py"
TINY_TRAIN = {"--variant": "mobileclip-tiny", "--max_steps": 2, "--warmup_steps": 1, "--mixed_precision": "no",
              "--num_workers": 0, "--report_to": "none"}  # a CPU-sized run of any training command
FIRST_256 = {"--split": "train[:256]"}  # retrieval over all 1,906 emoji (~6,700 captions) takes ~20 s on one CPU thread

# README block -> (the tests that run it, "as written" or the overrides and why).
BLOCKS = {
    f"{TITLE} | pip install torch==2.14.1": ("test_fresh_machine_installs_and_ci / test_fresh_machine_main_job", "installs: the pinned versions and the package with its extras are what is installed (not run: no network); the quickstart with `--scale tiny` (its CI scale; the default takes ~15 min); the test command: `.ci/run` runs this exact line (the suite does not run itself)"),
    "Models | import torch": ("test_python_snippets", "`path/or/hub-id` -> a saved mobileclip-tiny folder, `cat.png` -> a bundled emoji image"),
    "Converting official checkpoints | python -m modeling_mobileclip.convert": ("test_convert_commands", "Hub ids resolve from a Hugging Face cache written in the real layout (deterministic Apple S0 weights, random open_clip weights); `timm/MobileCLIP2-S4-OpenCLIP` -> `-S0-` and `mobileclip2_s3.pt` -> `mobileclip2_s0.pt` (S4/S3 are too large for CI); `--all` converts what that cache holds; the comment's `--reparameterize` is run too"),
    "Format | README.md YAML `configs:`": ("test_tiny_end_to_end_run", "not a command: a listing of a dataset folder, checked against the folder the tiny reinforce run writes"),
    "Format | from datasets import": ("test_python_snippets", "`DIR_OR_REPO` -> a small reinforced dataset folder"),
    "Reinforce your own data | python -m dataset_scripts.reinforce": ("test_reinforce_your_own_data", "`--source` -> 37 bundled emoji rows (Parquet), `--caption-column text` -> `captions` (their caption column), `--teachers` -> two tiny `hf:` folders, `--captioner` -> `column:captions` (the open_clip models need downloads); `--push-to-hub` goes to a local stand-in for the Hub API"),
    "Read Apple's DataCompDR | hf download apple/DataCompDR-12M": ("test_read_official_datacompdr", "`hf download`: parsed and run by huggingface_hub's CLI up to the download call (no network); `img2dataset` (not installed, downloads): its flags are checked against what the converter needs; `convert_official` as written, on 2 shards in Apple's layout with img2dataset image shards"),
    "Train on it | from dataset_scripts.training_view import": ("test_python_snippets", "`DIR_OR_REPO` -> a small reinforced dataset; `model`, `processor` and `epoch` (defined by the reader's own code) -> mobileclip-tiny, epoch 0"),
    "Training (`training/`) | accelerate launch training/train.py": ("test_training_commands", "one GPU / CPU: parsed as written (8,192 = 256 x 32 x 1), then run with `TINY_TRAIN`, our reinforced Parquet for `/data/datacompdr12m`, `--per_device_batch_size 4 --global_batch_size 8` (still 2 derived accumulation steps); 32 processes (`$RANK`, `$MASTER` set): accelerate's parser and the batch split (8,192 = 256 x 1 x 32); the `publish` flags parsed"),
    "Training at DataCompDR scale | hf download apple/DataCompDR-12M": ("test_training_at_datacompdr_scale", "`hf download` and `img2dataset`: Apple's block's commands with `/data/` paths (checked equal); the launches: accelerate's parser, batch split and stream slots per process as the comments state; the 8-GPU command runs as 1 CPU process with `TINY_TRAIN`, Apple-layout tars for the `/data` globs and `--per_device_batch_size 2 --global_batch_size 4`; `convert_official` with a one-shard Apple layout for the `/data` globs"),
    "Fine-tuning a converted checkpoint (LiT) | accelerate launch training/train.py": ("test_lit_fine_tuning", "`mobileclip-s0-hf` -> a saved mobileclip-tiny folder; run with `TINY_TRAIN` (2 steps; `--variant` becomes mobileclip-tiny, the folder's architecture); the saved image tower is checked bit-identical to the folder's, the text tower trained"),
    "Presets (`training/configs/`) | python -m dataset_scripts.reinforce": ("test_tiny_end_to_end_run", "`teacher_a`/`teacher_b` are links to one saved mobileclip-tiny folder (the comment: any saved folder works); `--max_steps 2 --eval_max_samples 64` (the preset trains 50 steps)"),
    "Zero-shot classification | python -m evaluation.zero_shot": ("test_evaluation_commands", "`path/to/mobileclip-s2` and `...` hold a mobileclip-tiny folder; `clip-benchmark/wds_imagenet1k` is a local CLIP_benchmark mirror of 18 emoji (a local folder comes before the Hub); `my_templates.json` is written here; `outputs/tiny-cpu-clip/model` is the Example's run; `accelerate launch -m ... --dataset ...` runs as 1 process on the tiny model and the imagenet1k mirror"),
    "Retrieval | python -m evaluation.retrieval": ("test_evaluation_commands", "`...` -> mobileclip-tiny; `clip-benchmark/wds_mscoco_captions` is a local CLIP_benchmark retrieval mirror of 6 emoji; the emoji command with `FIRST_256` (CI time)"),
    "The 38-task suite (Avg 38) | python -m evaluation.suite": ("test_evaluation_commands", "`...` -> mobileclip-tiny; `/data/datacomp_eval` -> a folder with CLIP_benchmark mirrors of imagenet1k and vtab/pets; run with the optional flags"),
    "ARO | python -m evaluation.aro": ("test_evaluation_commands", "`...` -> mobileclip-tiny; `/data/aro` -> a folder in the published VG-Relation layout (3 cases)"),
    "Metrics as `evaluate` modules | import evaluate": ("test_python_snippets", "`logits`, `labels`, `text_to_image_scores` and `image_index_of_each_text` (the reader's) -> small hand-checked arrays"),
    "Latency | python -m evaluation.latency": ("test_latency_commands", "`mobileclip-s2` -> `mobileclip-tiny`, `--runs 1 --warmup 0` (timing is benchmarks' job); the optional flags parsed; `path/to/model` holds mobileclip-tiny and `--device cuda` runs on cpu when no GPU is present"),
    "Example: the emoji set with a tiny trained model | accelerate launch training/train.py": ("test_example_block_names_the_preset_that_trains_it / test_example_emoji_evaluation", "the training command parsed as written (its comment states the preset's steps and batch), then run with `--max_steps 2` (the preset trains 50 steps); zero-shot as written, retrieval with `FIRST_256` (CI time)"),
    "Demo | pip install -e": ("test_demo_commands", "the install: the `demo` extra is installed; each command parsed by the demo's own parser, then its models and image index built and the page assembled (not served: tests/evaluation/test_demo_browser.py serves it in Chromium), with `runs/quickstart/students/*` and the Hub ids -> a mobileclip-tiny folder, `s0-onnx` -> that folder's ONNX export, `my_photos` -> 3 emoji PNGs, the emoji set -> its first 24 Noto rows (`--images-split train[:24]`, CI time); `--write-space` as written"),
    "Deploy | pip install -e": ("test_deploy_commands", "the install: the `export` extra is installed; `DIR_OR_ID` -> a mobileclip-tiny folder, `--fidelity-samples 16` (default 200)"),
    "Deploy | import json, sys": ("test_deploy_commands", "as written, saved as zero_shot_onnx.py and run with the README's own command line on the ONNX export (tests/modeling/test_export_deploy.py also checks its answers against PyTorch)"),
}


def readme_blocks() -> dict[str, str]:
    """{key: text} of every fenced block; the key is its heading and the first three words of its first command."""
    blocks, heading, lines, index = [], None, README.read_text().splitlines(), 0
    while index < len(lines):
        if match := re.match(r"#{1,4} (.+)", lines[index]):
            heading = match.group(1).strip()
        elif lines[index].startswith("```"):
            end = lines.index("```", index + 1)
            first = next(line for line in lines[index + 1:end] if line.strip() and not line.lstrip().startswith("#"))
            blocks.append((f"{heading} | {' '.join(first.split()[:3])}", "\n".join(lines[index + 1:end])))
            index = end
        index += 1
    assert len(blocks) == len(dict(blocks)), "two README blocks share a key: make their first words differ"
    return dict(blocks)


def block(key: str) -> str:
    return readme_blocks()[key]  # a KeyError: the README block is gone, update BLOCKS and this test


def commands(key: str) -> list[list[str]]:
    """The block's commands as shell words: `\\` continuations joined, comments dropped, `&&` chains split."""
    found = []
    for line in re.sub(r"\\\n\s*", " ", block(key)).splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            found, words = found + [words[:end]], words[end + 1:]
    return found


def options(words: list[str], values: dict) -> list[str]:
    """`words` with `--flag value` pairs set: a present flag gets the new value, a missing one is appended."""
    words = list(words)
    for flag, value in values.items():
        words += [] if flag in words else [flag, ""]
        words[words.index(flag) + 1] = str(value)
    return words


def replaced(words: list[str], values: dict) -> list[str]:
    """`words` with README placeholders replaced: each must occur (an edited README must be looked at here)."""
    assert set(values) <= set(words), f"{sorted(set(values) - set(words))} not in {words}"
    return [str(values.get(word, word)) for word in words]


def run(words: list[str], cwd: Path):
    """One README command, in-process in `cwd`; returns what `main` returns."""
    AcceleratorState._reset_state(True)  # each command configures its own Accelerator, as in a fresh process
    GradientState._reset_state()
    with contextlib.chdir(cwd):
        if words[:2] == ["python", "-m"]:
            return importlib.import_module(words[2]).main(words[3:])
        assert words[:2] == ["accelerate", "launch"], f"not a command this test runs: {words}"
        launch = launch_command_parser().parse_args(words[2:])
        module = launch.training_script if launch.module else "training.train"
        assert launch.module or Path(launch.training_script).resolve() == REPO_ROOT / "training" / "train.py"
        return importlib.import_module(module).main(launch.training_script_args)


def launch_plan(words: list[str]):
    """(accelerate's options, the training config, its batch sizes) of a training launch, without running it."""
    env = {"$RANK": "0", "$MASTER": "10.0.0.1"}  # the shell variables the reader sets
    launch = launch_command_parser().parse_args([env.get(word, word) for word in words[2:]])
    assert launch.training_script == "training/train.py"
    with contextlib.chdir(REPO_ROOT):
        config = parse_args(launch.training_script_args)
    return launch, config, resolve_batch_sizes(config, launch.num_processes or 1)


def run_snippet(source: str, namespace: dict | None = None, **replacements) -> dict:
    """Runs a README Python block, placeholders replaced, keeping bare expressions' values in `shown` (a notebook's)."""
    for old, new in replacements.items():
        assert old in source, f"{old!r} is not in the snippet any more"
        source = source.replace(old, str(new))
    tree, shown = ast.parse(source), ast.Attribute(ast.Name("shown", ast.Load()), "append", ast.Load())
    tree.body = [ast.Expr(ast.Call(shown, [n.value], [])) if isinstance(n, ast.Expr) else n for n in tree.body]
    exec(compile(ast.fix_missing_locations(tree), str(README), "exec"), namespace := {"shown": [], **(namespace or {})})
    return namespace


def installed(extra: str) -> bool:
    """Every requirement of the package's `extra` is installed (what `pip install -e ".[extra]"` did)."""
    requirements = [r for r in importlib.metadata.requires("mobileclip-hf") if f'extra == "{extra}"' in r]
    return bool(requirements) and all(importlib.metadata.version(re.match(r"[\w-]+", r).group(0)) for r in requirements)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    """A scratch folder laid out like the repository root; the tiny model at the README's placeholder model paths."""
    root = tmp_path_factory.mktemp("readme")
    parts = "dataset_scripts/data training/configs training/train.py evaluation/metrics".split()
    models = "path/to/mobileclip-s2 path/to/model teacher_a teacher_b".split()  # and the tiny run's two teachers
    for part, target in [(part, REPO_ROOT / part) for part in parts] + [(model, tiny_model_dir) for model in models]:
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        (root / part).symlink_to(target)
    return root


def emoji_rows(count: int):
    rows = datasets.load_dataset(str(EMOJI), "twitter", split="train")
    return rows.select(range(0, len(rows), len(rows) // count)).select(range(count))


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory) -> Path:
    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"), num_rows=16, dims=(5, 5))  # as Apple's


def official_shards(root: Path, reinforced: Path, shards: int) -> dict[str, str]:
    """README `/data` glob -> our rows as Apple's reinforcement tars / img2dataset image tars (one image missing)."""
    from test_train_streaming import write_official_layout

    shutil.copytree(reinforced, root / "parquet")
    tars, images = write_official_layout(root / "parquet", root, shards, missing_uid="emoji-6")
    return {"/data/DataCompDR-12M/*.tar": f"{tars}/*.tar", "/data/DataComp-12M-images/*.tar": f"{images}/*.tar"}


@pytest.fixture(scope="module")
def mirrors(workspace) -> Path:
    """CLIP_benchmark's own WebDataset exports at `clip-benchmark/wds_*` (a local folder comes before the Hub): 18 emoji
    and their 9 categories as imagenet1k and vtab-pets, 6 emoji and their captions as mscoco_captions."""
    from clip_benchmark.webdataset_builder import convert_dataset, convert_retrieval_dataset

    from test_eval_suite import _Pairs

    root, rows = workspace / "clip-benchmark", emoji_rows(18)
    classes = sorted(set(rows["category"]))
    pairs = _Pairs([(image, classes.index(c)) for image, c in zip(rows["image"], rows["category"])], classes,
                   ["an emoji of {c}.", "a {c} icon."])
    for name in ("wds_imagenet1k", "wds_vtab-pets"):
        convert_dataset(pairs, "test", str(root / name), max_count=10, verbose=False)
    captions = _Pairs([(image, list(cell)) for image, cell in zip(rows["image"][:6], rows["captions"][:6])])
    convert_retrieval_dataset(captions, "test", str(root / "wds_mscoco_captions"), max_count=4, verbose=False)
    return root


@pytest.fixture(scope="module")
def example_run(workspace) -> Path:
    """The Example section's training command (`--max_steps 2`): `outputs/tiny-cpu-clip/model` in the workspace."""
    result = run(options(commands(EXAMPLE)[0], {"--max_steps": 2}), workspace)
    assert result.step == 2 and result.model_dir == Path("outputs/tiny-cpu-clip/model")
    return workspace / result.model_dir


def test_every_readme_block_has_an_entry():
    keys = set(readme_blocks())
    assert sorted(keys - set(BLOCKS)) == [], "README blocks without a test: add them to BLOCKS"
    assert sorted(set(BLOCKS) - keys) == [], "BLOCKS entries whose README block is gone"
    for names, how in BLOCKS.values():
        assert how and all(name.strip() in globals() for name in names.split("/")), names


FRESH = f"{TITLE} | pip install torch==2.14.1"


def test_fresh_machine_installs_and_ci():
    install, editable, quickstart, install_again, editable_test, pytest_run = commands(FRESH)
    assert install == install_again and install[:2] == ["pip", "install"] and quickstart[:2] == ["python", "-m"]
    declared = {r.name: r.specifier for r in map(Requirement, importlib.metadata.requires("mobileclip-hf")) if not r.marker}
    for name, version in (pin.split("==") for pin in install[2:]):  # pins within pyproject's ranges (CI also tests lows)
        assert version in declared[name], f"README pins {name}=={version}; pyproject.toml requires {declared[name]}"
    assert (editable, editable_test) == (["pip", "install", "-e", "."], ["pip", "install", "-e", ".[test]"])
    assert installed("test")  # what `pip install -e ".[test]"` installs is here
    tests = next(line for line in block(FRESH).splitlines() if "pytest" in line)  # .ci/run runs this line verbatim
    assert tests in map(str.strip, (REPO_ROOT / ".ci" / "run").read_text().splitlines()) and pytest_run == ["HF_HUB_OFFLINE=1", "python", "-m", "pytest", "tests"]


@pytest.mark.slow
def test_fresh_machine_main_job(workspace):
    result = subprocess.run([sys.executable, *commands(FRESH)[2][1:], "--scale", "tiny"], cwd=workspace,
                            env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"learning-efficiency factor: (\d+\.\d+|inf)x", result.stdout.strip().splitlines()[-1])
    output = workspace / "runs" / "quickstart"  # the README's artefact paths
    assert set(json.loads((output / "learning_curves.json").read_text())["students"]) == {"clip", "reinforced"}
    assert (output / "learning_curves.png").stat().st_size and all(
        (output / "students" / student / "model.safetensors").is_file() for student in ("clip", "reinforced"))


@pytest.mark.slow
def test_convert_commands(golden_dir, workspace, tmp_path, monkeypatch):
    import open_clip
    import timm

    from model_helpers import golden_state_dict
    from hub_helpers import write_cached_repo

    torch.save(apple := golden_state_dict(golden_dir, "s0"), tmp_path / "mobileclip_s0.pt")
    tower = timm.create_model("fastvit_mci0", pretrained=False, num_classes=512).eval()
    tower.load_state_dict(timm.models.fastvit.checkpoint_filter_fn(apple, tower))
    torch.manual_seed(0)
    open_clip_weights = open_clip.create_model("MobileCLIP2-S0", pretrained=None).state_dict()
    torch.save(open_clip_weights, workspace / "mobileclip2_s0.pt")
    for name, weights in (("model", tower.state_dict()), ("open_clip_model", open_clip_weights)):
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / f"{name}.safetensors"))
    for repo, file in (("apple/MobileCLIP-S0", "mobileclip_s0.pt"), ("apple/mobileclip_s0_timm", "model.safetensors"),
                       ("timm/MobileCLIP2-S0-OpenCLIP", "open_clip_model.safetensors")):
        write_cached_repo(tmp_path / "hf_cache", repo, {file: tmp_path / file})
    for module in ("constants", "utils._cache_manager"):  # downloads resolve through the first, --all scans the second
        monkeypatch.setattr(f"huggingface_hub.{module}.HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    key = "Converting official checkpoints | python -m modeling_mobileclip.convert"
    small = {"timm/MobileCLIP2-S4-OpenCLIP": "timm/MobileCLIP2-S0-OpenCLIP", "mobileclip2_s3.pt": "mobileclip2_s0.pt"}
    for command, variant in zip(commands(key)[:4], ["mobileclip-s0", "mobileclip2-s0"] * 2):
        folder = workspace / run(replaced(command, {k: v for k, v in small.items() if k in command}), workspace)
        assert {"model.safetensors", "processor_config.json", "README.md"} <= {path.name for path in folder.iterdir()}
        assert json.loads((folder / "config.json").read_text())["variant"] == variant and folder.name == command[-1]
    assert sorted(map(str, run(commands(key)[4], workspace))) == [
        "converted/MobileCLIP-S0", "converted/MobileCLIP2-S0-OpenCLIP", "converted/mobileclip_s0_timm"]
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as usage:
        run(["python", "-m", "modeling_mobileclip.convert", "--help"], workspace)
    assert all(flag in usage.getvalue() for flag in re.findall(r"--[a-z-]+", block(key).split("\n#", 1)[1]))
    fused = run([*commands(key)[0][:-1], "s0-fused", "--reparameterize"], workspace)  # the comment's first option
    assert json.loads((workspace / fused / "config.json").read_text())["vision_config"]["reparameterized"]


@pytest.mark.slow
def test_reinforce_your_own_data(workspace, emoji_subset, monkeypatch, tmp_path):
    from dataset_scripts.dr_format import load_reinforcement_metadata
    from hub_helpers import LocalHub

    command = [w.strip("[]") for w in commands("Reinforce your own data | python -m dataset_scripts.reinforce")[0]]
    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    entry = run(options(command, {"--source": emoji_subset, "--caption-column": "captions", "--captioner": "column:captions",
                                  "--teachers": f"hf:{workspace / 'teacher_a'},hf:{workspace / 'teacher_b'}"}), workspace)
    metadata = load_reinforcement_metadata(workspace / "my-datacompdr")
    assert entry["complete"] and entry["written"] == 37 and len(metadata.teachers) == 2
    assert (metadata.num_augmentations, metadata.num_synthetic_captions) == (30, 5)
    assert hub.uploads[-1]["repo_id"] == "me/my-datacompdr" and "README.md" in hub.uploads[-1]["files"]


@pytest.mark.slow
def test_read_official_datacompdr(workspace, reinforced, tmp_path, monkeypatch):
    from huggingface_hub.cli import download as hf_download, hf  # (imports the Hub cache module: keep it local)

    *downloads, img2dataset, convert = commands(APPLE)
    calls = []  # `hf download` runs through huggingface_hub's own CLI up to the download call (no network here)
    monkeypatch.setattr(hf_download, "snapshot_download", lambda **kwargs: calls.append(kwargs) or kwargs["local_dir"])
    assert all(CliRunner().invoke(hf.app, words[1:], catch_exceptions=False).exit_code == 0 for words in downloads)
    assert [(c["repo_id"], c["repo_type"], c["local_dir"]) for c in calls] == [
        ("apple/DataCompDR-12M", "dataset", "DataCompDR-12M"), ("mlfoundations/DataComp-12M", "dataset", "DataComp-12M")]
    # img2dataset is not installed (it downloads): its options against what the converter's join needs.
    values = dict(zip(img2dataset[1::2], img2dataset[2::2]))
    assert img2dataset[0] == "img2dataset" and len(img2dataset) % 2 and all(flag[:2] == "--" for flag in values)
    assert (values["--url_list"], values["--input_format"], values["--output_folder"]) == (
        "DataComp-12M", "parquet", "DataComp-12M-images")  # the converter's `--images` folder
    assert json.loads(values["--save_additional_columns"]) == ["uid"] and int(values["--number_sample_per_shard"]) > 0
    assert (values["--resize_mode"], values["--skip_reencode"], values["--output_format"]) == ("no", "True", "webdataset")
    for name, glob in zip(("DataCompDR-12M", "DataComp-12M-images"), official_shards(tmp_path, reinforced, 2).values()):
        (workspace / name).symlink_to(Path(glob).parent)
    entry = run(convert, workspace)  # as written: 2 shards, so 2 worker processes
    assert entry["written"] == 15 and entry["skipped_by_reason"] == {"missing_image": 1}
    assert len(list((workspace / "DataCompDR-12M-parquet" / "data").glob("*.parquet"))) == 2


def test_python_snippets(tiny_model_dir, reinforced, tmp_path, monkeypatch):
    """Models; Format (read a reinforced dataset, replay a stored augmentation); Train on it (the per-sample view);
    Metrics as `evaluate` modules."""
    from modeling_mobileclip import MobileCLIPConfig, MobileCLIPModel, MobileCLIPProcessor

    emoji_rows(1)["image"][0].save(tmp_path / "cat.png")
    scope = run_snippet(block("Models | import torch"),
                        **{"path/or/hub-id": tiny_model_dir, '"cat.png"': repr(str(tmp_path / "cat.png"))})
    assert scope["probs"].shape == (1, 2) and float(scope["probs"].sum()) == pytest.approx(1.0)
    assert scope["image_features"].shape == (1, 32) and scope["text_features"].shape == (2, 32)
    assert torch.allclose(scope["text_features"].norm(dim=-1), torch.ones(2))
    assert scope["model"].config.vision_config.reparameterized and scope["model"].config.text_config.reparameterized

    scope = run_snippet(block("Format | from datasets import"), DIR_OR_REPO=reinforced)
    assert len(scope["ds"]) == 16 and scope["view"].size == (224, 224)

    reader = {"model": MobileCLIPModel(MobileCLIPConfig.from_variant("mobileclip-tiny")), "epoch": 0,
              "processor": MobileCLIPProcessor.from_variant("mobileclip-tiny")}
    snippet = block("Train on it | from dataset_scripts.training_view import")
    sample = run_snippet(snippet, reader, DIR_OR_REPO=reinforced)["sample"]
    assert {"views", "input_ids", "syn_input_ids", "image_emb", "text_emb", "syn_text_emb"} <= set(sample)
    assert sample["views"].dtype == torch.uint8 and tuple(sample["views"].shape) == (3, 64, 64)
    assert sample["image_emb"].shape[-1] == 10 and sample["input_ids"].shape[-1] == 77

    monkeypatch.chdir(REPO_ROOT)  # the metric modules load by their relative path
    data = {"logits": [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0], [2.0, 3.0, 0.0]], "labels": [0, 1, 2, 0],
            # 2 images, 3 captions: caption 2 (of image 1) ranks image 0 first.
            "text_to_image_scores": [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], "image_index_of_each_text": [0, 1, 1]}
    accuracy, recall = run_snippet(block("Metrics as `evaluate` modules | import evaluate"), data)["shown"]
    assert accuracy["acc1"] == pytest.approx(3 / 4) and accuracy["mean_per_class_recall"] == pytest.approx(5 / 6)
    assert recall["image_retrieval_recall@1"] == pytest.approx(2 / 3) and recall["text_retrieval_recall@1"] == 1.0


@pytest.mark.slow
def test_training_commands(workspace, reinforced, capsys):
    one, nodes = commands(key := "Training (`training/`) | accelerate launch training/train.py")
    _, config, batches = launch_plan(one)
    assert batches == BatchSizes(8192, 256, 32, 1) and config.resume_from_checkpoint == "latest"
    launch, _, batches = launch_plan(nodes)
    assert (launch.num_machines, launch.num_processes, batches) == (4, 32, BatchSizes(8192, 256, 1, 32))
    _, config, _ = launch_plan([*one, *shlex.split(re.search(r"# publish: (.+)", block(key)).group(1))])
    assert config.push_to_hub and config.hub_model_id == "ORG/NAME"
    result = run(options(one, {"--train_data": reinforced, "--per_device_batch_size": 4, "--global_batch_size": 8,
                               "--output_dir": "outputs/s0", **TINY_TRAIN}), workspace)
    assert result.step == 2 and (workspace / "outputs" / "s0" / "model" / "config.json").is_file()
    assert "global batch 8 = 4 per device x 2 accumulation steps x 1 process" in capsys.readouterr().out


def test_lit_fine_tuning(workspace, tiny_model_dir):
    [command] = commands("Fine-tuning a converted checkpoint (LiT) | accelerate launch training/train.py")
    result = run(options(replaced(command, {"mobileclip-s0-hf": tiny_model_dir}), TINY_TRAIN), workspace)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(workspace / result.model_dir / "model.safetensors"))
    weights = [name for name in before if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    image = [name for name in weights if name.startswith("vision_model.")]
    assert result.step == 2 and image and all(torch.equal(after[name], before[name]) for name in image)
    assert all(not torch.equal(after[name], before[name]) for name in set(weights) - set(image))  # text, logit scale


@pytest.mark.slow
def test_training_at_datacompdr_scale(workspace, reinforced, tmp_path, capsys):
    from training.streaming import default_slots

    key = "Training at DataCompDR scale | hf download apple/DataCompDR-12M"
    *downloads, nodes, eight, convert, nodes_1b = commands(key)  # the downloads: Apple's block, into /data
    assert [[w.replace("/data/", "") for w in c] for c in downloads] == commands(APPLE)[:3]
    comments = " ".join(line.strip("# ") for line in block(key).splitlines() if line.startswith("#")).replace(",", "")
    for command, layout, shards, stated in [(nodes, BatchSizes(8192, 256, 1, 32), 1024, True),
                                            (eight, BatchSizes(8192, 256, 4, 8), 1024, False),
                                            (nodes_1b, BatchSizes(65536, 128, 4, 128), 65536, True)]:
        launch, config, batches = launch_plan(command)
        assert batches == layout and launch.multi_gpu and config.train_images.endswith("-images/*.tar")
        slots = default_slots(shards, layout.global_batch)  # the comments: 1,024 slots, 32 or 8 per process
        assert slots == 1024 and (not stated or f"(1024 slots: {slots // layout.num_processes} per process)" in comments)
    result = run(options(replaced(eight, official_shards(tmp_path, reinforced, 4)), {
        "--per_device_batch_size": 2, "--global_batch_size": 4, "--output_dir": "outputs/official", **TINY_TRAIN}), workspace)
    assert result.step == 2 and result.history[-1]["distill_loss"] > 0
    assert "global batch 4 = 2 per device x 2 accumulation steps x 1 process" in capsys.readouterr().out
    # One shard here, so no worker pool starts (Apple's block runs one): its 16 rows, one image missing.
    entry = run(replaced(convert, official_shards(tmp_path / "one", reinforced, 1)), workspace)
    assert entry["written"] == 15 and (workspace / "data" / "datacompdr12m" / "README.md").is_file()


@pytest.mark.slow
def test_tiny_end_to_end_run(workspace):
    reinforce, train = commands("Presets (`training/configs/`) | python -m dataset_scripts.reinforce")
    assert run(reinforce, workspace)["written"] == 256
    # The Format section's listing of a reinforced dataset folder names what this run wrote.
    listing = sorted(line.split()[0] for line in block("Format | README.md YAML `configs:`").splitlines())
    output = workspace / "runs" / "emoji-dr"
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and ".reinforce_state" not in p.parts)
    assert len(written) == len(listing) and all(re.fullmatch(re.sub("[UP]", r"\\d", name), path)
                                                for name, path in zip(listing, written))
    result = run(options(train, {"--max_steps": 2, "--eval_max_samples": 64}), workspace)
    assert result.step == 2 and (workspace / "outputs" / "tiny-cpu" / "model" / "config.json").is_file()
    assert {"eval/acc1", "eval/acc5", "train/loss"} <= set(result.metrics), result.metrics


@pytest.mark.slow
def test_evaluation_commands(workspace, mirrors, example_run, tiny_model_dir, tmp_path):
    """Zero-shot, retrieval, the suite and ARO."""
    from test_eval_aro import _two_colour_image, _vg_case

    imagenet, emoji, several = commands("Zero-shot classification | python -m evaluation.zero_shot")
    run(imagenet, workspace)  # as written: the local mirror brings its class names and templates
    record = json.loads((workspace / "in1k.json").read_text())
    assert record["task"] == "zeroshot_classification" and 0 <= record["metrics"]["acc1"] <= record["metrics"]["acc5"]
    (workspace / "my_templates.json").write_text(json.dumps(["an emoji of {c}.", "an icon of {c}."]))
    assert example_run.is_dir() and {"acc1", "acc5", "mean_per_class_recall"} <= set(run(emoji, workspace))
    metrics = run(options(several, {"--model": tiny_model_dir, "--dataset": "clip-benchmark/wds_imagenet1k"}), workspace)
    assert metrics["acc1"] == pytest.approx(record["metrics"]["acc1"])  # the same model, data and prompts

    coco, emoji = commands("Retrieval | python -m evaluation.retrieval")
    metrics = run(replaced(coco, {"...": tiny_model_dir}), workspace)
    assert metrics["image_retrieval_recall@10"] == 1.0 and "mean_recall@1" in metrics  # 6 images: all in the top 10
    metrics = run(options(replaced(emoji, {"...": tiny_model_dir}), FIRST_256), workspace)
    assert 0 < metrics["image_retrieval_recall@10"] < 1 and "text_retrieval_recall@5" in metrics

    [suite] = commands("The 38-task suite (Avg 38) | python -m evaluation.suite")
    report = run(replaced([w.strip("[]") for w in suite], {"...": tiny_model_dir, "/data/datacomp_eval": mirrors}), workspace)
    assert set(report.scores) == {"imagenet1k", "vtab/pets"} and not report.missing
    [summary] = (workspace / "eval_results").rglob("summary.json")
    assert json.loads(summary.read_text())["average"] == pytest.approx(report.average)

    _two_colour_image(tmp_path / "aro" / "images" / "2345.png")
    cases = [_vg_case("right", "blue", "red", relation_name="on"), _vg_case("left", "red", "blue", relation_name="on")]
    (tmp_path / "aro" / "visual_genome_relation.json").write_text(json.dumps(cases))
    [aro] = commands("ARO | python -m evaluation.aro")
    metrics = run(replaced(aro, {"...": tiny_model_dir, "/data/aro": tmp_path / "aro"}), workspace)
    assert metrics["num_groups"] == 1 and metrics["accuracy"] in (0.0, 0.5, 1.0), metrics


@pytest.mark.slow
def test_latency_commands(workspace):
    from evaluation.latency import parse_args

    variant, model = commands("Latency | python -m evaluation.latency")
    full = parse_args([w.strip("[]") for w in variant[3:]])  # the optional flags as the parser reads them
    assert full.compile and full.dtype == "bfloat16" and full.reparameterize and full.batch_sizes == [1, 8]
    quick = {"--runs": 1, "--warmup": 0}  # timing is the benchmarks' job
    required = variant[:variant.index("[--compile]")]
    rows = run(options(replaced(required, {"mobileclip-s2": "mobileclip-tiny"}), quick), workspace)
    assert [(r["encoder"], r["batch_size"]) for r in rows] == [("image", 1), ("text", 1), ("image", 8), ("text", 8)]
    assert all(r["ours_ms"] > 0 and r["peer_ms"] > 0 for r in rows)
    rows = run(options(model, {"--device": "cuda" if torch.cuda.is_available() else "cpu", **quick}), workspace)
    assert [r["batch_size"] for r in rows if r["encoder"] == "image"] == [1, 8, 256]


def test_example_block_names_the_preset_that_trains_it():
    """...and the README's figures link to sections of BENCHMARKS.md that exist (GitHub's heading anchors)."""
    headings = re.findall(r"^#+ (.+)$", (REPO_ROOT / "BENCHMARKS.md").read_text(), re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    assert set(re.findall(r"\(BENCHMARKS\.md#([^)]+)\)", README.read_text())) <= anchors
    train, zero_shot, _ = commands(EXAMPLE)
    _, config, batches = launch_plan(train)
    assert (config.variant, config.mode, config.train_data_config) == ("mobileclip-tiny", "clip", "twitter")
    assert f"{config.max_steps} steps at batch {batches.global_batch}" in block(EXAMPLE)
    assert zero_shot[zero_shot.index("--model") + 1] == f"{config.output_dir}/model"


@pytest.mark.slow
def test_example_emoji_evaluation(workspace, example_run):
    _, zero_shot, retrieval = commands(EXAMPLE)
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(run(zero_shot, workspace))
    recalls = run(options(retrieval, FIRST_256), workspace)
    assert {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} <= set(recalls)
    assert all(json.loads((workspace / name).read_text())["dataset"] for name in ("noto-categories.json", "noto-retrieval.json"))


@pytest.mark.slow
@pytest.mark.slow
def test_demo_commands(workspace, tiny_model_dir, tmp_path):
    from evaluation.demo.cli import load_models, main as demo_main, parse_settings
    from evaluation.demo.app import build_app
    from modeling_mobileclip.export import main as export_main

    install, students, onnx, space = commands("Demo | pip install -e")
    assert install == ["pip", "install", "-e", ".[demo]"] and installed("demo")
    export_main(["--model", str(tiny_model_dir), "--format", "onnx", "--output", str(tmp_path / "s0-onnx"),
                 "--fidelity-samples", "0"])
    photos = tmp_path / "my_photos"
    photos.mkdir()
    for index, row in enumerate(emoji_rows(3)):
        row["image"].save(photos / f"{index}.png")
    models = {"runs/quickstart/students/clip": tiny_model_dir, "runs/quickstart/students/reinforced": tiny_model_dir,
              "apple/MobileCLIP-S0": tiny_model_dir, "s0-onnx": tmp_path / "s0-onnx", "my_photos": photos}
    for command in (students, onnx):
        assert command[:3] == ["python", "-m", "evaluation.demo"]
        settings = parse_settings(replaced(command, {k: v for k, v in models.items() if k in command})[3:])
        settings.cache_dir, settings.progress = str(tmp_path / "cache"), False
        if settings.images_config == "google":
            settings.images_split = "train[:24]"
        with contextlib.chdir(workspace):
            served = load_models(settings)
        assert len(served) == len(settings.models) + len(settings.onnx) and all(m.index is not None for m in served)
        assert len(served[0].index.embeddings) == (24 if settings.images_config else 3)
        build_app(served, settings.template, settings.labels, settings.top_k)
    with contextlib.chdir(tmp_path):
        folder = demo_main(space[3:])
    assert folder == Path("mobileclip-space") and (tmp_path / folder / "app.py").is_file()
    assert "apple/MobileCLIP-S2" in (tmp_path / folder / "README.md").read_text()


def test_deploy_commands(workspace, tiny_model_dir):
    install, *exports = commands("Deploy | pip install -e")
    assert install == ["pip", "install", "-e", ".[export]"] and installed("export")
    for command in exports:
        run(options(replaced(command, {"DIR_OR_ID": tiny_model_dir}), {"--fidelity-samples": 16}), workspace)
        folder = workspace / command[command.index("--output") + 1]
        manifest, fidelity = (json.loads((folder / f"{name}.json").read_text()) for name in ("manifest", "fidelity"))
        assert set(manifest["components"]) == {"image", "text"} and ("not_measured" in fidelity if "coreml" in command
                                                                     else fidelity["image"]["cosine_min"] > 0.9)
    # The deployment snippet, saved and run with the README's own command line on the fp32 export.
    (workspace / "zero_shot_onnx.py").write_text(block("Deploy | import json, sys"))
    line = re.search(r"`(python zero_shot_onnx\.py [^`]+)`", README.read_text()).group(1)
    emoji_rows(1)["image"][0].convert("RGB").save(workspace / "photo.jpg")
    result = subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=workspace, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    printed = dict(row.split("\t")[::-1] for row in result.stdout.strip().splitlines())
    assert result.returncode == 0 and sorted(printed) == ["a car", "a cat", "a dog"], result.stderr[-3000:]
    assert sum(map(float, printed.values())) == pytest.approx(1.0, abs=1e-5)
