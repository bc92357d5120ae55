"""Convert the ViFT authors' training data into a Hub dataset and publish it.

    python -m hub.push_dataset --data_dir AUTHORS_JSON_DIR --image_folder IMAGES --output_dir vift-data \
        --repo_id my-org/vift-data [--source CONFIG=PATH ...] [--records_per_shard N] [--num_proc N] \
        [--restart] [--license LICENSE] [--private] [--revision BRANCH] [--commit_message MSG] [--token TOKEN] \
        [--convert_only | --dry_run]

`--data_dir` is searched for first_stage_captions.json, second_stage_captions.json, text_data_magpie.json and
text_data_qwen_distill.json (configs first_stage_captions, second_stage_captions, text_magpie, text_qwen_distill);
`--source CONFIG=PATH` adds or replaces one. The conversion resumes where an interrupted run stopped (same
`--output_dir`); `--restart` discards it. `--dry_run` converts, prints the file plan and the card, uploads nothing.
The token (`--token`, else HF_TOKEN or the saved login) is never printed.
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from modeling_vift.publishing import PublishError
from modeling_vift.publishing.dataset import DatasetConversionError, find_sources, push_dataset


@dataclass
class PushDatasetArguments:
    image_folder: str = field(metadata={"help": "the folder the records' image paths are relative to"})
    output_dir: str = field(metadata={"help": "where the Parquet shards and the card are written"})
    repo_id: str = field(metadata={"help": "namespace/name of the dataset repository"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the authors' JSON files"})
    source: list[str] = field(default_factory=list, metadata={"help": "source files, each as CONFIG=PATH"})
    records_per_shard: int | None = field(
        default=None, metadata={"help": "records per Parquet shard (default 2000 with images, 50000 text-only)"}
    )
    num_proc: int = field(default=1, metadata={"help": "worker processes converting shards"})
    restart: bool = field(default=False, metadata={"help": "discard an earlier conversion in --output_dir"})
    license: str = "other"
    private: bool = False
    revision: str | None = field(default=None, metadata={"help": "branch to commit to (created if missing; default main)"})
    commit_message: str | None = None
    token: str | None = field(default=None, metadata={"help": "Hub token with write access (never printed)"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bars"})
    convert_only: bool = field(default=False, metadata={"help": "convert and write the card; upload nothing"})
    dry_run: bool = field(default=False, metadata={"help": "convert, print the file plan and card; upload nothing"})

    def __post_init__(self):
        if self.convert_only and self.dry_run:
            raise ValueError("--convert_only and --dry_run exclude each other: give one (or neither, to upload).")


def main(argv=None):
    (args,) = HfArgumentParser(PushDatasetArguments).parse_args_into_dataclasses(argv)
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
