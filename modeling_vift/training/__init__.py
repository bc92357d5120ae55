"""Training ViFT with TRL: the data mixture (`data`), packing with per-sample attention (`packing`) and the trainer
set-up for every stage (`trainer`). Entry points: `recipes/stage1_align.py`, `recipes/stage2_finetune.py`,
`recipes/vpgc_train.py` (thin shims over `make_parser` and `main`).

Not part of the remote-code bundle; it may use trl, peft, accelerate, datasets and yaml.
"""

from .trainer import ViFTScriptArguments, ViFTSFTConfig, ViFTSFTTrainer, build_trainer, main, make_parser, run


__all__ = ["ViFTSFTConfig", "ViFTSFTTrainer", "ViFTScriptArguments", "build_trainer", "main", "make_parser", "run"]
