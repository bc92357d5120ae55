"""Runs a recipe module under `accelerate launch` with FSDP on CPU processes (gloo), for the two-process FSDP2 test.

accelerate (1.15) turns an FSDP config into FSDP only on accelerator devices: on CPU processes (`use_cpu: true`) its
state stays MULTI_CPU and the model is silently wrapped in DDP (every rank holds every parameter), which the
`parameter layout` log line shows. torch's `fully_shard` itself runs on CPU over gloo, so this launcher changes the
one decision accelerate makes by device type, then runs the recipe unchanged:

    accelerate launch --config_file fsdp2.yaml -m tests._fsdp2_on_cpu recipes.stage2_finetune --config ... --use_cpu true
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def fsdp_on_cpu_processes():
    original_init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() re-reads it

    AcceleratorState.__init__ = __init__


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        raise SystemExit("tests._fsdp2_on_cpu runs under `accelerate launch` with an FSDP config (ACCELERATE_USE_FSDP "
                         "is not set): pass --config_file with `distributed_type: FSDP`.")
    fsdp_on_cpu_processes()
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
