"""Convert the ViFT authors' training data into a Hub dataset and publish it.

    python -m hub.push_dataset --data-dir AUTHORS_JSON_DIR --image-folder IMAGES --output-dir vift-data \
        --repo-id my-org/vift-data [--source CONFIG=PATH ...] [--records-per-shard N] [--num-proc N] \
        [--restart] [--license LICENSE] [--private] [--revision BRANCH] [--commit-message MSG] [--token TOKEN] \
        [--convert-only | --dry-run]

`--data-dir` is searched for first_stage_captions.json, second_stage_captions.json, text_data_magpie.json and
text_data_qwen_distill.json (configs first_stage_captions, second_stage_captions, text_magpie, text_qwen_distill);
`--source CONFIG=PATH` adds or replaces one. The conversion resumes where an interrupted run stopped (same
`--output-dir`); `--restart` discards it. `--dry-run` converts, prints the file plan and the card, uploads nothing.
The token (`--token`, else HF_TOKEN or the saved login) is never printed.
"""

import argparse
import sys

from modeling_vift.publishing import PublishError
from modeling_vift.publishing.dataset import DatasetConversionError, find_sources, push_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hub.push_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the authors' JSON files")
    parser.add_argument("--source", action="append", default=[], metavar="CONFIG=PATH", help="one source file")
    parser.add_argument("--image-folder", required=True, help="the folder the records' image paths are relative to")
    parser.add_argument("--output-dir", required=True, help="where the Parquet shards and the card are written")
    parser.add_argument("--repo-id", required=True, help="namespace/name of the dataset repository")
    parser.add_argument("--records-per-shard", type=int, default=None,
                        help="records per Parquet shard (default 2000 with images, 50000 text-only)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes converting shards")
    parser.add_argument("--restart", action="store_true", help="discard an earlier conversion in --output-dir")
    parser.add_argument("--license", default="other")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--token", default=None, help="Hub token with write access (never printed)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--convert-only", action="store_true", help="convert and write the card; upload nothing")
    mode.add_argument("--dry-run", action="store_true", help="convert, print the file plan and card; upload nothing")
    args = parser.parse_args(argv)
    try:
        push_dataset(
            find_sources(args.data_dir, args.source),
            args.image_folder,
            args.output_dir,
            args.repo_id,
            records_per_shard=args.records_per_shard,
            num_proc=args.num_proc,
            restart=args.restart,
            license=args.license,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            dry_run=args.dry_run,
            convert_only=args.convert_only,
            progress=not args.no_progress,
        )
    except (PublishError, DatasetConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
