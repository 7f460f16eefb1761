"""`slm data upload`: push a prepared dataset folder to the Hugging Face Hub (or copy it to a local target).

Design decisions
- `huggingface_hub` does the work (`create_repo(exist_ok=True)` + `upload_folder`, which uploads in resumable,
  content-addressed commits); nothing here re-implements transfer. It is imported only when uploading to the Hub.
- Only prepared datasets are uploaded: the folder must hold a `manifest.json` (shards + tokenizer + report), so a
  half-written or wrong folder never reaches a public repo. Hidden files (work folders, temporaries) are skipped.
- A target that is a path (`/...`, `./...`, `../...`, `~/...` or `file://...`) is a local copy made atomically: that is
  how the command is tested on a machine without network, and it doubles as "publish to a shared filesystem".
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slm.data.pack import MANIFEST_FILE
from slm.errors import SlmError, atomic_dir

_LOCAL_PREFIXES = ("/", "./", "../", "~", "file://")


def is_local_target(target: str) -> bool:
    return target.startswith(_LOCAL_PREFIXES)


def upload_dataset(folder: str | Path, target: str, *, private: bool = False, revision: str = "",
                   message: str = "", token: str | None = None) -> str:
    """Upload `folder` to the Hub dataset repo `target` (or copy it to a local path); returns where it went."""
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise SlmError(f"{folder}: not a prepared dataset (no {MANIFEST_FILE}); run `slm data prepare` first")
    if is_local_target(target):
        dest = Path(target.removeprefix("file://")).expanduser()
        if dest.resolve() == folder.resolve():
            raise SlmError(f"{target}: is the dataset folder itself; choose another target")
        with atomic_dir(dest, kind="dataset") as tmp:  # a non-empty dest is refused (never replaced)
            shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        return str(dest)
    if target.count("/") != 1:
        raise SlmError(f"{target}: expected a Hub repo id `owner/name` or a local path (./dir, /abs/dir, file://...)")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise SlmError("slm data upload: needs huggingface_hub; run `pip install huggingface_hub`") from None
    api = HfApi(token=token)
    try:
        api.create_repo(target, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=target, repo_type="dataset",
                                   revision=revision or None, ignore_patterns=[".*", "**/.*"],
                                   commit_message=message or f"Upload {folder.name} with slm")
    except Exception as e:  # auth, network, permissions: all user-fixable
        raise SlmError(f"{target}: upload failed ({type(e).__name__}: {e}); check HF_TOKEN, the repo id and network"
                       ) from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/datasets/{target}")
