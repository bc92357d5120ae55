"""How one rank of a training run holds the trainable parameters and the optimizer state: `parameter_layout` counts
the elements this rank stores against the full model, so a log line shows whether FSDP2 or DeepSpeed ZeRO really
sharded them (`main` logs it once per rank; the two-process tests read it).

- FSDP2 (`fully_shard`): every parameter is a `DTensor`; the rank holds `to_local()`, its placements say how.
- DeepSpeed ZeRO-3: the rank's partition of a parameter is `param.ds_tensor`, the full size is `param.ds_numel`.
- DeepSpeed ZeRO-1/2 and DDP: the parameters are whole on every rank; ZeRO partitions the optimizer state, which the
  innermost optimizer holds for this rank's partition only.
"""

import torch


def _local_numel(tensor):
    from torch.distributed.tensor import DTensor

    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()


def innermost_optimizer(optimizer):
    """The optimizer that holds the state, below accelerate's and DeepSpeed's wrappers (each keeps `.optimizer`)."""
    while optimizer is not None and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def parameter_layout(model, optimizer=None):
    """A dict for this rank: `parameters` (elements of the trainable parameters, full size), `local_parameters`
    (the elements of them this rank stores), `placements` (the DTensor placements seen, or "zero3" for ZeRO-3
    partitions, or "whole"), and `optimizer_state` (elements of the optimizer's tensor state on this rank)."""
    from torch.distributed.tensor import DTensor

    full = local = 0
    placements = set()
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if hasattr(param, "ds_numel"):
            full += param.ds_numel
            local += param.ds_tensor.numel()
            placements.add("zero3")
        elif isinstance(param, DTensor):
            full += param.numel()
            local += param.to_local().numel()
            placements.add(str(tuple(param.placements)))
        else:
            full += param.numel()
            local += param.numel()
            placements.add("whole")
    state = 0
    inner = innermost_optimizer(optimizer)
    if isinstance(inner, torch.optim.Optimizer):
        for values in inner.state.values():
            state += sum(_local_numel(v) for v in values.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"parameters": full, "local_parameters": local, "placements": sorted(placements), "optimizer_state": state}


def save_fsdp2_model(trainer, output_dir):
    """Saves an FSDP2 (`fully_shard`) model as an ordinary ViFT folder. `Trainer.save_model` cannot: it writes weights
    only with `FULL_STATE_DICT` (the sharded type keeps checkpoint-* folders fast to write and resume), and it saves
    the remote code of the class `fully_shard` made (`FSDPViFTForConditionalGeneration`, defined in torch's FSDP
    files) instead of ViFT's. Every rank takes part in gathering the full state dict; the main process saves it
    from the model's own class."""
    from torch.distributed.fsdp import FSDPModule

    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.args.should_save:
        model = trainer.model
        sharded_class = type(model)
        model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
        try:
            trainer._save(output_dir, state_dict=state_dict)
        finally:
            model.__class__ = sharded_class
    trainer.accelerator.wait_for_everyone()


def unshard_fsdp2_lm_head(model):
    """Gathers the LM head before a training forward under FSDP2, so that its gradient is reduced across ranks.

    accelerate shards the output embeddings as their own FSDP2 unit (with the final norm when it is a direct child of
    the base model, which in ViFT it is not: it sits in `model.language_model`). TRL's fused LM head reads
    `lm_head.weight` without calling `lm_head`, so that unit's pre-forward hook never gathers it: TRL then gathers the
    DTensor itself, whose backward keeps each rank's own gradient for its shard, unreduced (measured on two processes:
    the LM head's gradient 68 % off the single-process one, every other parameter equal). Gathered here, the weight
    is the unit's unsharded parameter, and FSDP2's end-of-backward callback reduce-scatters its gradient."""
    from torch.distributed.fsdp import FSDPModule

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, FSDPModule):
        head.unshard()
