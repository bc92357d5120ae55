"""What publishing a model and publishing a dataset share: repo-id checks, the file plan, and the upload itself.

The upload goes through huggingface_hub (`create_repo`, `create_commit`, `upload_large_folder` / `upload_folder`);
what is written here is only what huggingface_hub does not offer: a plan of the files printed before anything is
sent (for `--dry_run`), and errors that name the remedy.
"""

import json
import os
import shutil
from dataclasses import dataclass


class PublishError(ValueError):
    """A folder or an option that cannot be published; the message says what is wrong and what to do."""


# Folders above these sizes go through the large-folder upload (several commits, resumable).
LARGE_FOLDER_FILES = 100
LARGE_FOLDER_BYTES = 50 * 2**30

def check_repo_id(repo_id, kind="model"):
    """Raises `PublishError` unless `repo_id` has the form `namespace/name` with Hub-valid characters."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    example = "my-org/vift-7b" if kind == "model" else "my-org/vift-data"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise PublishError(
            f"Repo id {repo_id!r} has the wrong form: expected 'namespace/name' (a user or organisation, a slash, the "
            f"repository name), e.g. {example!r}."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(
            f"Repo id {repo_id!r} is not valid: each part may use letters, digits, '-', '_' and '.', must not start or "
            f"end with '-' or '.', and the whole id is at most 96 characters, e.g. {example!r}."
        ) from None
    return repo_id


@dataclass
class PlannedFile:
    """One file of a repository: copied from `source` or generated (`content`)."""

    path_in_repo: str
    size: int
    origin: str
    source: str | None = None
    content: bytes | None = None


def check_model_location(name, what="model"):
    """Refuses, with the reason, a model name that is neither an existing local folder nor a Hub id. A mistyped local
    path would otherwise reach the Hub client and fail with its "Repo id must be in the form ..." message, which says
    nothing about the path. Paths that look local (absolute, `./`, `../`, `~`, more than one `/`, or under a folder
    that exists here) and do not exist are refused; anything else is left to `from_pretrained` as a Hub id."""
    if name is None or os.path.isdir(os.path.expanduser(name)):
        return
    if os.path.isfile(name):
        raise FileNotFoundError(f"The {what} {name!r} is a file: give the folder that holds its config.json.")
    parent = os.path.dirname(name)
    looks_local = (
        name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name or (parent and os.path.isdir(parent))
    )
    if looks_local:
        raise FileNotFoundError(
            f"The {what} folder {name!r} does not exist on this machine (a Hub id has the form 'org/name'): check the "
            f"path."
        )


def format_size(num_bytes):
    value = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def format_plan(files, repo_id, repo_type, private, revision, left_out=()):
    """The plan printed before anything is sent (and all that `--dry_run` does): huggingface_hub's uploads have no
    dry run that lists files, sizes and where each comes from."""
    total = sum(f.size for f in files)
    lines = [
        f"Repository: {repo_id} ({repo_type}, {'private' if private else 'public'}, revision {revision or 'main'})",
        f"Files ({len(files)}, {format_size(total)} in all):",
    ]
    width = max((len(f.path_in_repo) for f in files), default=10)
    for f in sorted(files, key=lambda f: f.path_in_repo):
        lines.append(f"  {f.path_in_repo:<{width}}  {format_size(f.size):>9}  {f.origin}")
    if left_out:
        shown = ", ".join(sorted(left_out)[:20]) + (", ..." if len(left_out) > 20 else "")
        lines.append(f"Left out ({len(left_out)}; not part of a {repo_type} repository): {shown}")
    return "\n".join(lines)


def materialize(files, directory, link=True):
    """Writes the planned files into `directory` laid out as in the repository (hard links where possible).

    huggingface_hub uploads folders as they are on disk; the plan mixes files of the checkpoint with generated ones
    (card, generation config), so they are laid out here first, without copying the weights."""
    os.makedirs(directory, exist_ok=True)
    for f in files:
        target = os.path.join(directory, f.path_in_repo)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.remove(target)
        if f.content is not None:
            with open(target, "wb") as out:
                out.write(f.content)
        elif link:
            try:
                os.link(f.source, target)
            except OSError:
                shutil.copy2(f.source, target)
        else:
            shutil.copy2(f.source, target)
    return directory


def is_large_folder(files):
    return len(files) > LARGE_FOLDER_FILES or sum(f.size for f in files) > LARGE_FOLDER_BYTES


def upload_to_hub(api, folder, files, repo_id, repo_type, private=False, revision=None, commit_message=None):
    """Creates the repository (and the branch `revision`), then uploads `files` (laid out in `folder`): one commit, or
    the large-folder upload for big folders. Returns what huggingface_hub returned."""
    from huggingface_hub import CommitOperationAdd

    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    paths = sorted(f.path_in_repo for f in files)
    if is_large_folder(files):
        if hasattr(api, "upload_large_folder"):
            return api.upload_large_folder(
                repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=revision, private=private,
                allow_patterns=paths,
            )
        # huggingface_hub 2.x folded the large-folder upload into upload_folder (batched, resumable commits).
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=revision,
            commit_message=commit_message, allow_patterns=paths,
        )
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=os.path.join(folder, p)) for p in paths]
    return api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, repo_type=repo_type, revision=revision
    )


def read_json(path, what, error=PublishError):
    """The JSON file at `path`; raises `error` (publishing: `PublishError`, conversion: `ConversionError`) naming `what`
    when it is missing or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{what} is missing: {path}.") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON ({path}: {e}).") from None



__all__ = [
    "LARGE_FOLDER_BYTES",
    "LARGE_FOLDER_FILES",
    "PlannedFile",
    "PublishError",
    "check_repo_id",
    "format_plan",
    "format_size",
    "is_large_folder",
    "materialize",
    "read_json",
    "upload_to_hub",
]
