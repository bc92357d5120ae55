"""Publish a ViFT checkpoint folder to the Hugging Face Hub.

    python -m hub.push_model --checkpoint CHECKPOINT --repo_id my-org/vift-7b \
        --base_model Qwen/Qwen2.5-7B-Instruct google/siglip-so400m-patch14-384 \
        --dataset my-org/vift-data [--private] [--revision BRANCH] [--commit_message MSG] [--token TOKEN] \
        [--license apache-2.0] [--tag TAG ...] [--fusion_by_default] [--local_dir DIR] [--dry_run]

`--dry_run` prints the exact file plan and model card and uploads nothing (with `--local_dir` the repository's files
are also laid out there). Without it, the folder is first loaded with trust_remote_code in a fresh process and must
generate, or nothing is uploaded. The token (`--token`, else HF_TOKEN or the saved login) is never printed.
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from modeling_vift.publishing import PublishError, push_model


@dataclass
class PushModelArguments:
    checkpoint: str = field(metadata={"help": "folder written by model.save_pretrained + processor.save_pretrained"})
    repo_id: str = field(metadata={"help": "namespace/name of the model repository"})
    base_model: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the base models (the language model and the vision tower)"}
    )
    dataset: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the training datasets"})
    license: str = "apache-2.0"
    tag: list[str] = field(default_factory=list, metadata={"help": "extra model-card tags"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(default=None, metadata={"help": "branch to commit to (created if missing; default main)"})
    commit_message: str | None = None
    token: str | None = field(default=None, metadata={"help": "Hub token with write access (never printed)"})
    fusion_by_default: bool = field(
        default=False, metadata={"help": "make generate() use fused inference unless called with fusion=False"}
    )
    local_dir: str | None = field(default=None, metadata={"help": "also lay the repository's files out in this folder"})
    verify_timeout: int = field(default=1800, metadata={"help": "seconds allowed for the load+generate check"})
    dry_run: bool = field(default=False, metadata={"help": "print the file plan and the card; upload nothing"})


def main(argv=None):
    (args,) = HfArgumentParser(PushModelArguments).parse_args_into_dataclasses(argv)
    try:
        push_model(
            args.checkpoint,
            args.repo_id,
            base_models=args.base_model,
            license=args.license,
            datasets=args.dataset,
            tags=args.tag,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            dry_run=args.dry_run,
            local_dir=args.local_dir,
            fusion_by_default=args.fusion_by_default,
            verify_timeout=args.verify_timeout,
        )
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
