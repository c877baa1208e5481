"""Publishing a model directory on the Hugging Face Hub: the upload, and `normgpt push`.

What goes up is exactly `model_files` (train/run_directory.py), the one definition of what a model directory
publishes, for every upload path (the trainer's `--push_to_hub`, `normgpt export ... --push_to_hub`, `normgpt push`):
`checkpoint-<step>/` (optimizer state, RNG pickles), metrics, logs and anything else a run leaves are never part of
the model, whatever they are called, and no Python file but normgpt's own model code. A directory whose config.json
names any other code is refused.

    normgpt push RUN_DIR --hub_model_id user/name [--hub_private_repo] [--dry_run]
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Any

from train.cli import OneLineParser
from train.run_directory import MODEL_CONFIG, foreign_code, model_files


class HubError(ValueError):
    """A model directory that cannot be published, or an upload that failed; the message is one line."""


def uploadable(model_dir: Path) -> list[str]:
    """What an upload of `model_dir` sends: its `model_files`. A config.json that would run code normgpt did not write
    (an auto_map naming a planted module) is refused: uploading it would publish the model as something it is not."""
    if foreign := foreign_code(model_dir):
        raise HubError(
            f"'{Path(model_dir) / MODEL_CONFIG}' names code normgpt did not write ({', '.join(foreign)}); refusing to "
            "upload it"
        )
    return model_files(model_dir)


def resolve_repo_id(repo_id: str, api: Any = None) -> str:
    """`name` -> `user/name` (the namespace of the logged-in user), as the Hub itself resolves it on upload, so a
    model card can show the id that loads the model. An id with a namespace is returned as it is, offline."""
    if "/" in repo_id:
        return repo_id
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        return f"{api.whoami()['name']}/{repo_id}"
    except Exception as err:
        raise HubError(f"cannot resolve '{repo_id}' to user/{repo_id}: {' '.join(str(err).split())}") from None


def push_to_hub(
    model_dir: Path,
    repo_id: str,
    private: bool | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> str:
    """Create (or reuse) the model repo `repo_id` and upload exactly `model_files(model_dir)` to it; returns the
    repo URL. Nothing already in the repo is deleted. `api` is an `HfApi` (the default reads the token that
    `hf auth login` or HF_TOKEN provides)."""
    model_dir = Path(model_dir)
    files = uploadable(model_dir)
    if MODEL_CONFIG not in files or not any(name.endswith((".safetensors", ".gguf")) for name in files):
        raise HubError(f"'{model_dir}' holds no model to upload (config.json and weights); train or export first")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        # Exact names, escaped so that fnmatch (which upload_folder applies) matches each file and nothing else.
        api.upload_folder(
            folder_path=str(model_dir),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=[glob.escape(name) for name in files],
            commit_message=commit_message or f"Upload normgpt model ({len(files)} files)",
        )
    except Exception as err:  # network, auth, name: the Hub's own message, on one line
        raise HubError(f"upload to '{repo_id}' failed: {' '.join(str(err).split())}") from None
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="push", prog="normgpt push", description="Upload a normgpt model directory (never its checkpoints)."
    )
    parser.add_argument("model_dir", type=Path, help="run or export directory")
    parser.add_argument("--hub_model_id", required=True, help="repo to create or update, e.g. user/normgpt-tiny")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repo private")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would go up, upload nothing")
    args = parser.parse_args(argv)
    try:
        files = uploadable(args.model_dir)
    except HubError as err:
        print(f"push: error: {err}", file=sys.stderr)
        return 2
    if not files:
        what = "no model files in" if args.model_dir.is_dir() else "no such directory:"
        print(f"push: error: {what} '{args.model_dir}'", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(files))
        return 0
    try:
        url = push_to_hub(args.model_dir, args.hub_model_id, private=args.hub_private_repo or None)
    except HubError as err:
        print(f"push: error: {err}", file=sys.stderr)
        return 2
    print(f"uploaded {len(files)} files to {url}")
    return 0
