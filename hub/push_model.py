"""Publish a ViFT checkpoint folder to the Hugging Face Hub.

    python -m hub.push_model CHECKPOINT --repo-id my-org/vift-7b \
        --base-model Qwen/Qwen2.5-7B-Instruct --base-model google/siglip-so400m-patch14-384 \
        --dataset my-org/vift-data [--private] [--revision BRANCH] [--commit-message MSG] [--token TOKEN] \
        [--license apache-2.0] [--tag TAG] [--fusion-by-default] [--local-dir DIR] [--dry-run]

`--dry-run` prints the exact file plan and model card and uploads nothing (with `--local-dir` the repository's files
are also laid out there). Without it, the folder is first loaded with trust_remote_code in a fresh process and must
generate, or nothing is uploaded. The token (`--token`, else HF_TOKEN or the saved login) is never printed.
"""

import argparse
import sys

from modeling_vift.publishing import PublishError, push_model


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hub.push_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="folder written by model.save_pretrained + processor.save_pretrained")
    parser.add_argument("--repo-id", required=True, help="namespace/name of the model repository")
    parser.add_argument("--base-model", action="append", default=None,
                        help="Hub id of a base model (the language model and the vision tower; repeat the option)")
    parser.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--tag", action="append", default=[], help="extra model-card tag (repeatable)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--token", default=None, help="Hub token with write access (never printed)")
    parser.add_argument("--fusion-by-default", action="store_true",
                        help="make generate() use fused inference unless called with fusion=False")
    parser.add_argument("--local-dir", default=None, help="also lay the repository's files out in this folder")
    parser.add_argument("--verify-timeout", type=int, default=1800, help="seconds allowed for the load+generate check")
    parser.add_argument("--dry-run", action="store_true", help="print the file plan and the card; upload nothing")
    args = parser.parse_args(argv)
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
