"""Output folders have an owner: reinforcement and training refuse to write into another run's folder; every file
and folder is written atomically (`modeling_mobileclip.atomic`), so a failed write leaves the previous content."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402

from test_dataset_reinforce import EMOJI, emoji_rows, models, read_output, run  # noqa: E402,F401 (fixture)
from torch_threads import single_torch_thread  # noqa: E402,F401 (autouse fixture)

ONE_TEACHER = dict(captioner=False)
SMALL = ("--split", "train[:3]", "--caption-column", "name")


def teacher(models):
    return models["open_clip_teacher"]


def write_source(path, rows):
    features = datasets.Features({"uid": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def rows(uids):
    images = emoji_rows(len(uids))
    return [{"uid": u, "image": r["image"], "caption": r["name"]} for u, r in zip(uids, images)]


def test_rerun_with_another_source_is_refused_and_the_same_run_resumes(tmp_path, models):
    output = tmp_path / "out"
    a = write_source(tmp_path / "a.parquet", rows(["a0", "a1", "a2"]))
    b = write_source(tmp_path / "b.parquet", rows(["b0", "b1", "b2"]))
    base = ("--caption-column", "caption")
    assert run(output, models, *base, source=a, teachers=teacher(models), **ONE_TEACHER)["written"] == 3
    with pytest.raises(ValueError, match=r"Refusing to write into .*reinforced from another source.*source: "
                                         r"existing .*a\.parquet.*b\.parquet.*--overwrite"):
        run(output, models, *base, source=b, teachers=teacher(models), **ONE_TEACHER)
    assert {r["uid"] for r in read_output(output)} == {"a0", "a1", "a2"}  # untouched
    rerun = run(output, models, *base, source=a, teachers=teacher(models), **ONE_TEACHER)  # same run: resumes
    assert rerun["complete"] and rerun["timing"]["samples"] == 0
    # --overwrite replaces the other run, and says so.
    entry = run(output, models, *base, "--overwrite", source=b, teachers=teacher(models), **ONE_TEACHER)
    assert entry["complete"] and {r["uid"] for r in read_output(output)} == {"b0", "b1", "b2"}


def test_folder_with_foreign_files_is_refused_and_overwrite_names_and_removes_them(tmp_path, models, capsys):
    output = tmp_path / "pulled-from-hub"
    (output / "data").mkdir(parents=True)
    (output / "data" / "train-00000-0000.parquet").write_bytes(b"someone else's rows")
    (output / "README.md").write_text("# my own notes\n")
    with pytest.raises(ValueError, match=r"holds 2 file\(s\) that no reinforcement run wrote.*README\.md.*"
                                         r"train-00000-0000\.parquet.*--overwrite"):
        run(output, models, *SMALL, teachers=teacher(models), **ONE_TEACHER)
    assert (output / "README.md").read_text() == "# my own notes\n"
    entry = run(output, models, *SMALL, "--overwrite", teachers=teacher(models), **ONE_TEACHER)
    assert entry["complete"] and entry["written"] == 3
    assert f"--overwrite: removing README.md, data from {output}" in capsys.readouterr().out
    assert "datacompdr" in (output / "README.md").read_text()


def test_an_edited_readme_of_our_own_run_is_not_silently_replaced(tmp_path, models):
    output = tmp_path / "out"
    run(output, models, *SMALL, teachers=teacher(models), **ONE_TEACHER)
    (output / "README.md").write_text("# hand-written card\n")
    with pytest.raises(ValueError, match=r"README\.md is not the dataset card this run wrote.*--overwrite to "
                                         r"replace its README\.md"):
        run(output, models, *SMALL, teachers=teacher(models), **ONE_TEACHER)
    assert (output / "README.md").read_text() == "# hand-written card\n"
    run(output, models, *SMALL, "--overwrite", teachers=teacher(models), **ONE_TEACHER)
    assert len(read_output(output)) == 3 and "datacompdr" in (output / "README.md").read_text()


def test_duplicated_uids_are_an_error_or_dropped_and_reported(tmp_path, models):
    source = write_source(tmp_path / "dup.parquet", rows(["x", "y", "x", "z", "y"]))
    args = ("--caption-column", "caption")
    with pytest.raises(ValueError, match=r"2 uid\(s\) in column 'uid' occur on several rows: 'x' \(rows 0, 2\), "
                                         r"'y' \(rows 1, 4\).*--drop-duplicate-uids"):
        run(tmp_path / "a", models, *args, source=source, teachers=teacher(models), **ONE_TEACHER)
    entry = run(tmp_path / "b", models, *args, "--drop-duplicate-uids", source=source, teachers=teacher(models),
                **ONE_TEACHER)
    assert sorted(r["uid"] for r in read_output(tmp_path / "b")) == ["x", "y", "z"]
    report = json.loads((tmp_path / "b" / "reinforce_report.json").read_text())["train"]
    assert report["dropped_duplicate_uids"] == [{"uid": "x", "row": 2}, {"uid": "y", "row": 4}]
    assert entry["written"] == 3
    with pytest.raises(ValueError, match="--drop-duplicate-uids needs the whole uid column"):
        run(tmp_path / "c", models, *args, "--drop-duplicate-uids", "--streaming", source=source,
            teachers=teacher(models), **ONE_TEACHER)


# --- training -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reinforced_data(tmp_path_factory):
    from train_helpers import build_reinforced_dataset

    return build_reinforced_dataset(tmp_path_factory.mktemp("reinforced"), num_rows=16)


def _config(**values):
    from train_helpers import tiny_config

    return tiny_config(**values)


def test_training_into_another_runs_folder_is_refused_and_the_old_run_is_untouched(
        fresh_accelerate_state, reinforced_data, tmp_path):
    from training.config import ConfigError
    from training.train import train

    out = tmp_path / "out"
    base = dict(train_data=str(reinforced_data), output_dir=str(out), resume_from_checkpoint="latest",
                save_steps=2, max_steps=4)
    train(_config(**base))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "run_fingerprint.json").is_file() and (out / "checkpoints").is_dir()
    with pytest.raises(ConfigError, match=r"output_dir .*holds another run .*seed: existing 0, now 1.*"
                                          r"overwrite_output_dir: true"):
        train(_config(**base, seed=1))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match=r"restart from step 0 over them.*resume_from_checkpoint: latest"):
        train(_config(**{**base, "resume_from_checkpoint": None}))
    # The same run resumes (nothing left to do: the result is the old one).
    assert train(_config(**base)).step == 4
    # overwrite_output_dir replaces it.
    result = train(_config(**base, seed=1, overwrite_output_dir=True))
    assert result.step == 4
    assert json.loads((out / "run_fingerprint.json").read_text())["seed"] == 1
    from importlib.metadata import version  # the installed package, read independently of our helper

    assert json.loads((out / "run_fingerprint.json").read_text())["code_version"] == f"mobileclip-hf {version('mobileclip-hf')}"


# --- official DataCompDR conversion -------------------------------------------------------------------------------


def convert(shards_glob, output, *extra):
    from dataset_scripts.convert_official import main as convert_main

    return convert_main(["--shards", str(shards_glob), "--output", str(output), "--no-progress", *extra])


def test_converted_folders_have_an_owner_too(tmp_path, models, capsys):
    from test_dataset_official import official_sample, write_tar

    a, b = tmp_path / "a", tmp_path / "b"
    for root, uids, seed in ((a, ["0a00", "0a01"], 0), (b, ["0b00"], 10)):
        root.mkdir()
        samples = [(uid, official_sample(uid, seed + i, "npz")[0]) for i, uid in enumerate(uids)]
        write_tar(root / "00000000.tar", samples)
    output = tmp_path / "converted"
    assert convert(a / "*.tar", output)["written"] == 2
    fingerprint = json.loads((output / ".reinforce_state" / "fingerprint.json").read_text())
    assert fingerprint["splits"]["train"]["shards"] == [[str(a / "00000000.tar"), (a / "00000000.tar").stat().st_size]]
    from importlib.metadata import version

    assert fingerprint["code_versions"] == [f"mobileclip-hf {version('mobileclip-hf')}"]
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}

    # Other shards, or the same shards kept under other options, are another conversion: refused, folder untouched.
    with pytest.raises(ValueError, match=r"Refusing to write into .*converted: its split 'train' was reinforced from "
                                         r"another source: shards: existing .*a/00000000\.tar.*b/00000000\.tar.*"
                                         r"--overwrite"):
        convert(b / "*.tar", output)
    with pytest.raises(ValueError, match=r"another source: options: .*'verify_images': True.*'verify_images': False"):
        convert(a / "*.tar", output, "--no-verify-images")
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    # The same conversion resumes (from another working directory too: local shards are recorded absolute).
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert convert("a/*.tar", "converted")["written"] == 2
    finally:
        os.chdir(cwd)
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file() and p.suffix == ".parquet"} == {
        p: v for p, v in before.items() if p.suffix == ".parquet"}
    # --overwrite replaces the other conversion.
    entry = convert(b / "*.tar", output, "--overwrite")
    assert entry["written"] == 1 and [r["uid"] for r in read_output(output)] == ["0b00"]
    assert "--overwrite: removing" in capsys.readouterr().out

    # A folder of foreign files, or one a reinforcement run made, is not converted into either.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my notes\n")
    with pytest.raises(ValueError, match=r"holds 1 file\(s\) that no reinforcement run wrote.*README\.md"):
        convert(a / "*.tar", foreign)
    assert (foreign / "README.md").read_text() == "# my notes\n"
    reinforced = tmp_path / "reinforced"
    run(reinforced, models, *SMALL, teachers=teacher(models), **ONE_TEACHER)
    with pytest.raises(ValueError, match=r"reinforced with other settings: teachers: .*--overwrite"):
        convert(a / "*.tar", reinforced)
    assert len(read_output(reinforced)) == 3 and "datacompdr" in (reinforced / "README.md").read_text()


def test_the_main_process_records_ownership_only_after_every_process_has_checked(tmp_path):
    """Otherwise another process may check while `metadata.json.tmp` exists and refuse it as a foreign file (seen
    in the two-process run of test_safety_workers)."""
    from dataset_scripts.dr_format import ReinforcementMetadata, TeacherInfo
    from dataset_scripts.ownership import claim_output

    output, records_at_barrier = tmp_path / "out", []
    metadata = ReinforcementMetadata(teachers=[TeacherInfo("open_clip:tiny:none", 4)], num_augmentations=1,
                                     num_synthetic_captions=0)
    claim_output(output, output / ".reinforce_state", "train", {"source": "x"}, metadata, overwrite=False,
                 is_main=True, has_part_states=False,
                 barrier=lambda: records_at_barrier.append(sorted(p.name for p in output.rglob("*"))))
    assert records_at_barrier == [[]]
    assert sorted(p.name for p in (output / ".reinforce_state").iterdir()) == ["fingerprint.json", "metadata.json"]


# ----------------------------------------------------------------------------------------------- atomic writes


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from modeling_mobileclip.atomic import atomic_path, write_json_atomic

    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"step": 1})
    assert json.loads(path.read_text()) == {"step": 1} and os.listdir(path.parent) == ["state.json"]
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(path) as staged:
            staged.write_text('{"step": 2, "half')
            raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"step": 1} and os.listdir(path.parent) == ["state.json"]
    with atomic_path(path) as staged:
        staged.write_text('{"step": 3}')
        assert json.loads(path.read_text()) == {"step": 1}  # not visible before the block ends
    assert json.loads(path.read_text()) == {"step": 3} and os.listdir(path.parent) == ["state.json"]


def test_an_atomic_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    from modeling_mobileclip.atomic import atomic_folder

    folder = tmp_path / "model"
    with atomic_folder(folder) as staging:
        (staging / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="copy died"):
        with atomic_folder(folder) as staging:
            (staging / "config.json").write_text("new")
            raise RuntimeError("copy died")
    assert os.listdir(tmp_path) == ["model"] and (folder / "config.json").read_text() == "old"
    (tmp_path / "model.tmp").mkdir()  # an interrupted earlier build
    (tmp_path / "model.tmp" / "stale.bin").write_text("stale")
    with atomic_folder(folder) as staging:
        (staging / "weights.safetensors").write_text("new")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(folder) == ["weights.safetensors"]


@pytest.mark.slow
def test_conversion_and_export_refuse_a_foreign_output_folder_unless_overwrite(golden_dir, tiny_model_dir, tmp_path,
                                                                               capsys):
    import torch

    from model_helpers import golden_state_dict
    from modeling_mobileclip.convert import main as convert_main
    from modeling_mobileclip.export import main as export_main

    checkpoint = tmp_path / "mobileclip_s0.pt"
    torch.save(golden_state_dict(golden_dir, "s0"), checkpoint)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    argv = ["--source", "apple", "--variant", "mobileclip-s0", "--checkpoint", str(checkpoint), "--output", str(mine)]
    with pytest.raises(ValueError, match=r"--output .*mine: it exists and is not a MobileCLIP folder.*--overwrite"):
        convert_main(argv)
    assert (mine / "notes.txt").read_text() == "keep"
    convert_main(argv + ["--overwrite"])
    assert not (mine / "notes.txt").exists() and (mine / "config.json").is_file()
    assert f"--overwrite: removing notes.txt from {mine}" in capsys.readouterr().out
    convert_main(argv)  # an earlier conversion is replaced without the flag

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a.txt").write_text("keep")
    export = ["--model", str(tiny_model_dir), "--format", "onnx", "--output", str(theirs), "--fidelity-samples", "0"]
    with pytest.raises(ValueError, match=r"theirs: it exists and is not an earlier export.*--overwrite"):
        export_main(export)
    assert (theirs / "a.txt").read_text() == "keep"
    export_main(export + ["--overwrite"])
    assert (theirs / "manifest.json").is_file() and not (theirs / "a.txt").exists()
