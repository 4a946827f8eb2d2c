"""A local stand-in for the Hub API: `HfApi.create_repo` / `upload_folder` patched at the class level (the calls
`huggingface_hub`, transformers' `push_to_hub` and our pushes make) to copy uploads into `root/<org>/<name>`."""

import hashlib
import os
import shutil
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.hf_api import CommitInfo, RepoUrl


class LocalHub:
    def __init__(self, root: Path):
        self.root = root
        self.created: list[dict] = []
        self.uploads: list[dict] = []

    def folder(self, repo_id: str) -> Path:
        return self.root / repo_id

    def install(self, monkeypatch) -> "LocalHub":
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
            hub.created.append(dict(repo_id=repo_id, private=private, repo_type=repo_type))
            hub.folder(repo_id).mkdir(parents=True, exist_ok=True)
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, path_in_repo=None, commit_message=None, repo_type=None,
                          ignore_patterns=None, **kwargs):
            target = hub.folder(repo_id) / (path_in_repo or "")
            shutil.copytree(folder_path, target, dirs_exist_ok=True)
            files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
            hub.uploads.append(dict(repo_id=repo_id, files=files, commit_message=commit_message, **kwargs))
            url = f"https://huggingface.co/{repo_id}/commit/{len(hub.uploads):040x}"
            return CommitInfo(commit_url=url, commit_message=commit_message or "", commit_description="",
                              oid=f"{len(hub.uploads):040x}")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        assert huggingface_hub.constants.HF_HUB_OFFLINE, "anything not patched must fail, not reach the Hub"
        return self


def write_cached_repo(cache, repo_id: str, files: dict, commit: str | None = None, repo_type: str = "model",
                      absent: tuple[str, ...] = ()) -> None:
    """Writes `files` ({name: local path}) into `cache` the way huggingface_hub stores a download: content-addressed
    blobs, a snapshot folder of symlinks per commit, and refs/main naming the commit; `absent` files are recorded as
    known to be missing from the repo (`.no_exist/<commit>/<name>`, what a download that found no such file leaves)."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        shutil.copyfile(source, blob)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    for name in absent:
        (repo / ".no_exist" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / commit / name).touch()
