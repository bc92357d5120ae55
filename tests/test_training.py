import json
import math
import os
import sys
from contextlib import nullcontext

import pytest
import torch
import yaml

from modeling_vift import ViFTForConditionalGeneration
from modeling_vift.testing_utils import tiny_vift
from modeling_vift.training.trainer import (
    HAS_ACTIVATION_CHECKPOINTING,
    build_trainer,
    configure_stage,
    lm_lora_config,
    make_parser,
    save_final,
)
from tests._training_fixtures import (  # noqa: F401  (tiny_assets is a session fixture)
    REPO,
    load_with_remote_code,
    run_command,
    run_recipe,
    tiny_assets,
    train_losses,
)


def tiny_args(config, *overrides):
    args = ["--config", os.path.join(REPO, "recipes", config), *map(str, overrides)]
    return make_parser().parse_args_and_config(args)


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage1_trains_the_projector_only_and_stage2_everything():
    model, _ = tiny_vift()
    configure_stage(model, 1)
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if ".multi_modal_projector." in n}
    configure_stage(model, 2)
    frozen = {n for n, _ in model.named_parameters()} - trainable_names(model)
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    first_unused = model.config.vision_feature_layer % (len(layers) + 1)
    assert frozen and frozen == {n for n, _ in model.named_parameters() if ".vision_tower." in n and n.split(
        ".vision_tower.")[-1].removeprefix("vision_model.").startswith(
        tuple(f"encoder.layers.{i}." for i in range(first_unused, len(layers))) + ("post_layernorm.", "head."))}
    # what stays trainable is exactly what the forward uses: every trainable parameter gets a gradient
    pixel_values = torch.randn(1, 3, tower.config.image_size, tower.config.image_size)
    model.model.get_image_features(pixel_values).pooler_output.sum().backward()
    assert all(p.grad is not None for n, p in tower.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in tower.named_parameters() if not p.requires_grad)
    configure_stage(model, 2, train_vision_tower=False)
    assert not any(".vision_tower." in n for n in trainable_names(model))


def test_stage2_lora_adapts_the_language_model_only_and_fully_trains_the_projector():
    from peft import get_peft_model
    from trl import ModelConfig

    model, _ = tiny_vift()
    configure_stage(model, 2, use_lora=True)
    peft_model = get_peft_model(model, lm_lora_config(ModelConfig(use_peft=True, lora_r=4, lora_alpha=8)))
    trainable = trainable_names(peft_model)
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)
    assert {n for n in trainable if "lora_" not in n} == {
        n for n in trainable if ".multi_modal_projector.modules_to_save." in n
    } != set()
    assert not any(".vision_tower." in n for n in trainable)


def test_stage2_parameter_groups_use_the_authors_learning_rates(tiny_assets, tmp_path):  # noqa: F811
    args = tiny_args("tiny_stage2.yaml", "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture",
                     os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml"),
                     "--output_dir", tmp_path)
    trainer = build_trainer(2, *args)
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    seen = set()
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            seen.add(name)
            expected = 2e-6 if (".vision_tower." in name or ".multi_modal_projector." in name) else 1e-5
            assert group["lr"] == pytest.approx(expected), name
    assert seen == trainable_names(trainer.model)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # the LM's rate is the one logged


@pytest.fixture(scope="module")
def recipe_runs(tiny_assets, tmp_path_factory):  # noqa: F811
    """Stage 1 from the tiny towers, then stage 2 from the stage-1 output on a mixture with broken images."""
    from recipes.make_tiny_assets import write_images

    out = tmp_path_factory.mktemp("recipes")
    data_dir = os.path.dirname(tiny_assets["stage2_captions"])
    stage1, stage2 = out / "stage1", out / "stage2"
    log1 = run_recipe("recipes.stage1_align", "recipes/tiny_stage1.yaml",
                      "--model_name_or_path", tiny_assets["text"], "--vision_tower_name_or_path", tiny_assets["vision"],
                      "--dataset_mixture", os.path.join(data_dir, "stage1_mixture.yaml"), "--output_dir", stage1)

    broken_images = out / "broken"
    good = write_images(str(broken_images), 1)[0]
    (broken_images / "corrupt.png").write_bytes(b"\x89PNG truncated")
    caption = [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a red circle"}]
    (out / "broken.json").write_text(json.dumps([
        {"id": "good", "image": good, "conversations": caption},
        {"id": "corrupt", "image": "corrupt.png", "conversations": caption},
        {"id": "missing", "image": "missing.png", "conversations": caption},
    ]))
    mixture = {"seed": 0, "sources": [
        {"name": "captions", "path": tiny_assets["stage2_captions"], "image_folder": tiny_assets["image_folder"],
         "fraction": 0.25},
        {"name": "text", "path": tiny_assets["text_instructions"], "fraction": 0.25},
        {"name": "trl", "path": tiny_assets["trl_mixed"], "fraction": 0.1},
        {"name": "broken", "path": str(out / "broken.json"), "image_folder": str(broken_images)},
    ]}
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    # Two whole epochs, so every sample (the corrupt image included) is loaded twice.
    log2 = run_recipe("recipes.stage2_finetune", "recipes/tiny_stage2.yaml", "--model_name_or_path", stage1,
                      "--dataset_mixture", out / "mixture.yaml", "--output_dir", stage2,
                      "--max_steps", -1, "--num_train_epochs", 2, "--per_device_train_batch_size", 4)
    return {"stage1": stage1, "stage2": stage2, "log1": log1, "log2": log2, "out": out}


def test_stage1_and_stage2_recipes_run_and_their_checkpoints_load_with_remote_code(recipe_runs):
    for stage in ("stage1", "stage2"):
        folder = recipe_runs[stage]
        losses = train_losses(folder)
        assert losses and all(math.isfinite(x) for x in losses)
        for name in ("modeling_vift.py", "configuration_vift.py", "processing_vift.py", "model.safetensors"):
            assert (folder / name).exists(), (stage, name)
    assert "ViFT stage 1 finished" in recipe_runs["log1"] and "ViFT stage 2 finished" in recipe_runs["log2"]
    # Stage 1 changed the projector only.
    towers = ViFTForConditionalGeneration.from_pretrained(recipe_runs["stage1"]).state_dict()
    stage2 = ViFTForConditionalGeneration.from_pretrained(recipe_runs["stage2"]).state_dict()
    assert any(not torch.equal(towers[k], stage2[k]) for k in towers if ".language_model." in k)
    assert any(not torch.equal(towers[k], stage2[k]) for k in towers if ".vision_tower." in k)
    load_with_remote_code([recipe_runs["stage1"], recipe_runs["stage2"]], recipe_runs["out"] / "remote")


def test_skipped_images_are_reported_at_the_end_and_in_the_logs(recipe_runs):
    with open(recipe_runs["stage2"] / "vift_data_report.json") as f:
        report = json.load(f)
    # The missing file is caught while tokenising, the corrupt one when its batch is loaded: in each of the two
    # epochs, counted once.
    assert report["skipped"] == {"broken/missing_image": 1, "broken/unreadable_image": 1}
    log = recipe_runs["log2"]
    assert log.count("Skipping a sample of source 'broken'") == 2  # the warning, each time it happened
    assert "corrupt.png" in log and "cannot be decoded" in log
    assert log.count("ViFT stage 2 skip report") == 1  # printed once, at the end
    assert "ViFT stage 2 skip report: 2 sample(s) skipped" in log
    with open(recipe_runs["stage2"] / "trainer_state.json") as f:
        history = json.load(f)["log_history"]
    assert max(entry.get("skipped_samples", 0) for entry in history) == 1


def test_recipe_runs_warn_neither_about_packed_attention_nor_deprecated_arguments(recipe_runs):
    """Issue 17 item 8: stage 1 (built from two towers) and stage 2 print no transformers warning that
    `vift_packed_sdpa` was set unchecked ("undefined behavior") and no deprecation warning about the YAML's arguments."""
    for log in (recipe_runs["log1"], recipe_runs["log2"]):
        assert "undefined behavior" not in log and "without finding the associated sub-model" not in log
        # TRL's own SFTConfig knows only `gradient_checkpointing` on the oldest transformers; from 5.24 on, transformers
    # warns that name (and its _kwargs) is deprecated (TRL's default trips it too): that warning, no other, is expected.
    deprecated = [line for line in log.splitlines() if "deprecated" in line]
    assert all("`gradient_checkpointing" in line or "`{old}` is deprecated" in line for line in deprecated), deprecated


def test_from_components_towers_share_the_composite_config_so_attention_switches_are_checked(tiny_assets):  # noqa: F811
    """The towers `from_components` swaps in read the composite config's sub-configs: `set_attn_implementation`
    reaches their attention layers through the sub-models and sets no sub-config unchecked."""
    import logging

    from modeling_vift.training.packing import PACKED_SDPA, register_packed_sdpa

    register_packed_sdpa()
    model = ViFTForConditionalGeneration.from_components(tiny_assets["vision"], tiny_assets["text"])
    assert model.model.vision_tower.config is model.config.vision_config
    assert model.model.language_model.config is model.config.text_config
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        model.set_attn_implementation(PACKED_SDPA)
    finally:
        transformers_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    attention = [m for m in model.modules() if hasattr(m, "config") and type(m).__name__.endswith("Attention")]
    assert attention and all(m.config._attn_implementation == PACKED_SDPA for m in attention)


TRAINING_YAMLS = sorted(name for name in os.listdir(os.path.join(REPO, "recipes"))
                        if name.endswith(".yaml") and not name.startswith("eval_"))


@pytest.mark.parametrize("name", TRAINING_YAMLS)
def test_shipped_training_yamls_parse_without_deprecation_warnings(name):
    """Every training YAML under recipes/ parses through the parser that runs it (the recipes' `make_parser`; TRL's
    own for `trl_sft_vift.yaml`, which can only say `gradient_checkpointing` and so gets transformers 5.24's
    deprecation warning, nothing else) under the installed transformers, and asks for the activation checkpointing it
    means (on at full scale, off in the tiny CPU recipes)."""
    import logging
    import warnings

    from trl.scripts.sft import make_parser as trl_make_parser

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("transformers", "trl")]
    for logger in loggers:
        logger.addHandler(handler)
    args = ["--config", os.path.join(REPO, "recipes", name), "--use_cpu", "true", "--bf16", "false"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if name == "trl_sft_vift.yaml":
                parsed = trl_make_parser().parse_args_and_config(args, fail_with_unknown_args=False)
            else:
                parsed = make_parser().parse_args_and_config(args)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    if name == "trl_sft_vift.yaml":  # TRL's own SFTConfig takes only the old name, deprecated from transformers 5.24
        messages = [m for m in messages if not m.startswith(("`gradient_checkpointing` is deprecated",
                                                             "`gradient_checkpointing_kwargs` is deprecated"))]
    assert not messages, name
    training_args = parsed[1]
    assert training_args.gradient_checkpointing is (not name.startswith("tiny_"))
    if not name.startswith("tiny_") and name != "trl_sft_vift.yaml":  # transformers 5.24 moves TRL's to the new name
        assert training_args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_activation_checkpointing_is_one_option_under_either_name():
    """The recipes' `activation_checkpointing` reaches the Trainer under the running transformers' name; left unset,
    checkpointing stays on (TRL's default); the old name still works."""
    for overrides, expected in (((), True), (("--activation_checkpointing", "false"), False),
                                (("--activation_checkpointing", "true"), True)):
        args = tiny_args("tiny_stage2.yaml", *overrides)[1] if overrides else make_parser().parse_args_and_config(
            ["--output_dir", "unused", "--use_cpu", "true", "--bf16", "false"])[1]
        assert args.gradient_checkpointing is expected and args.activation_checkpointing is expected
    with pytest.warns(FutureWarning, match="gradient_checkpointing") if HAS_ACTIVATION_CHECKPOINTING else nullcontext():
        old = make_parser().parse_args_and_config(
            ["--output_dir", "unused", "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false"])[1]
    assert old.gradient_checkpointing is False and old.activation_checkpointing is False
    with pytest.raises(ValueError, match="disagree: set activation_checkpointing only"):
        tiny_args("tiny_stage2.yaml", "--activation_checkpointing", "true", "--gradient_checkpointing", "false")


def test_saved_folders_carry_vifts_card_and_never_trls_draft(recipe_runs):
    """Issue 17 item 8: the final folders of the recipes hold ViFT's card (what the folder is, where it started, how
    to load it), not TRL's draft ("fine-tuned version of [None]")."""
    for stage, number in (("stage1", 1), ("stage2", 2)):
        card = (recipe_runs[stage] / "README.md").read_text()
        assert "[None]" not in card and "ViFT training output" in card and f"stage {number}): the final model" in card
        assert f'from_pretrained("{recipe_runs[stage]}", trust_remote_code=True)' in card
    assert "vision tower `" in (recipe_runs["stage1"] / "README.md").read_text()  # built from the two towers


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_loss_curve(tiny_assets, tmp_path):  # noqa: F811
    mixture = os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml")

    def trainer_for(output_dir):
        return build_trainer(2, *tiny_args(
            "tiny_stage2.yaml", "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture", mixture,
            "--output_dir", output_dir, "--max_steps", 4, "--learning_rate", 1e-3, "--warmup_steps", 0,
            "--save_strategy", "steps", "--save_steps", 2, "--logging_steps", 1))

    def losses(trainer):
        return {e["step"]: (e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e}

    full = trainer_for(tmp_path / "full")
    full.train()
    for name in ("modeling_vift.py", "processing_vift.py", "processor_config.json", "model.safetensors"):
        assert (tmp_path / "full" / "checkpoint-2" / name).exists(), name
    card = (tmp_path / "full" / "checkpoint-2" / "README.md").read_text()
    assert "the checkpoint at step 2" in card and "[None]" not in card
    assert not (tmp_path / "full" / "README.md").exists()  # no TRL draft in the run folder before the final save
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected, got = losses(full), losses(resumed)
    assert sorted(expected) == [1, 2, 3, 4] and {3, 4} <= set(got)
    assert len({expected[s][0] for s in expected}) > 1  # the loss moves, so a match is not trivial
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_loss_chunk_size_trains_like_trls_fused_lm_head(tiny_assets, tmp_path):  # noqa: F811
    mixture = os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml")

    def losses(*extra):
        trainer = build_trainer(2, *tiny_args(
            "tiny_stage2.yaml", "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture", mixture,
            "--output_dir", tmp_path / str(len(extra)), "--max_steps", 3, "--learning_rate", 1e-3,
            "--warmup_steps", 0, "--logging_steps", 1, "--save_strategy", "no", *extra))
        trainer.train()
        return [(e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e]

    fused, chunked = losses(), losses("--loss_chunk_size", 16)
    assert len(fused) == 3 and len({loss for loss, _ in fused}) > 1
    for a, b in zip(fused, chunked):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)


def test_use_liger_kernel_without_liger_kernel_fails_with_the_remedy(tiny_assets, tmp_path):  # noqa: F811
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    args = tiny_args("tiny_stage2.yaml", "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture",
                     os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml"),
                     "--output_dir", tmp_path, "--use_liger_kernel", "true")
    with pytest.raises(ImportError, match="needs liger-kernel.*pip install liger-kernel"):
        build_trainer(2, *args)


def test_lora_stage2_saves_a_merged_checkpoint(tiny_assets, tmp_path):  # noqa: F811
    mixture = os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml")
    trainer = build_trainer(2, *tiny_args(
        "tiny_stage2.yaml", "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture", mixture,
        "--output_dir", tmp_path, "--max_steps", 2, "--use_peft", "true", "--lora_r", 4, "--lora_alpha", 8,
        "--learning_rate", 1e-2, "--projector_learning_rate", 1e-2, "--save_strategy", "steps", "--save_steps", 1))
    trainer.train()
    save_final(trainer, str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    # Every folder written holds ViFT's card: the adapters' (in place of PEFT's template) and the merged model's.
    cards = {path.parent.name: path.read_text() for path in tmp_path.rglob("README.md")}
    assert set(cards) == {"checkpoint-1", "checkpoint-2", "merged"}, sorted(cards)
    assert not any("[None]" in card or "Model Card for Model ID" in card for card in cards.values())
    assert "LoRA adapters on the language model" in cards["checkpoint-2"] and "PeftModel.from_pretrained" in cards[
        "checkpoint-2"]
    assert "the final model" in cards["merged"] and "library_name: transformers" in cards["merged"]
    merged = ViFTForConditionalGeneration.from_pretrained(tmp_path / "merged").state_dict()
    start = ViFTForConditionalGeneration.from_pretrained(tiny_assets["checkpoint"]).state_dict()
    assert merged.keys() == start.keys()
    changed = {k for k in start if not torch.equal(start[k], merged[k])}
    assert any(".multi_modal_projector." in k for k in changed)
    assert any(".language_model." in k and "q_proj" in k for k in changed)
    assert not any(".vision_tower." in k for k in changed)


def test_accelerate_launch_runs_stage2_on_two_cpu_processes(tiny_assets, tmp_path):  # noqa: F811
    mixture = os.path.join(os.path.dirname(tiny_assets["stage2_captions"]), "stage2_mixture.yaml")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `--cpu` picks accelerate's single-process launcher (its multi-CPU mode needs mpirun); torchrun's launcher on a
    # machine without GPUs runs the two processes on the CPU (gloo), as `use_cpu: true` in the recipe asks.
    log = run_command([
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "recipes.stage2_finetune", "--config", "recipes/tiny_stage2.yaml",
        "--model_name_or_path", tiny_assets["checkpoint"], "--dataset_mixture", mixture, "--output_dir", tmp_path,
        "--max_steps", "2",
    ], timeout=400)
    assert "[rank 0/2] ViFT stage 2 finished." in log and "[rank 1/2] ViFT stage 2 finished." in log
    losses = train_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    model = ViFTForConditionalGeneration.from_pretrained(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trl_sft_cli_trains_a_vift_checkpoint_on_a_conversational_dataset(tiny_assets, tmp_path):  # noqa: F811
    with open(os.path.join(REPO, "recipes", "trl_sft_vift.yaml")) as f:
        config = yaml.safe_load(f)
    config.update(
        model_name_or_path=tiny_assets["checkpoint"], dataset_name=tiny_assets["trl_mixed"], dtype="float32",
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        bf16=False, use_cpu=True, logging_steps=1, save_strategy="no",
    )
    config_path = tmp_path / "trl_sft.yaml"
    config_path.write_text(yaml.safe_dump(config))
    trl = os.path.join(os.path.dirname(sys.executable), "trl")
    log = run_command([trl, "sft", "--config", config_path], timeout=400)
    assert "Training completed" in log
    # TRL's own SFTConfig knows only `gradient_checkpointing` on the oldest transformers; from 5.24 on, transformers
    # warns that name (and its _kwargs) is deprecated (TRL's default trips it too): that warning, no other, is expected.
    deprecated = [line for line in log.splitlines() if "deprecated" in line]
    assert all("`gradient_checkpointing" in line or "`{old}` is deprecated" in line for line in deprecated), deprecated
    losses = [float(line.split("'loss': '")[1].split("'")[0]) for line in log.splitlines() if "'loss': '" in line]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    model = ViFTForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (tmp_path / "out" / "modeling_vift.py").exists()


def test_vpgc_stage_trains_only_the_vpgc_module_and_loads_with_remote_code(recipe_runs):
    """The VPG-C recipe adds VPG-C to a stage-2 checkpoint and trains that module alone, through the same data and
    packing machinery; the result loads with trust_remote_code."""
    out = recipe_runs["out"] / "vpgc"
    run_recipe("recipes.vpgc_train", "recipes/tiny_vpgc.yaml", "--model_name_or_path", recipe_runs["stage2"],
               "--dataset_mixture", recipe_runs["out"] / "mixture.yaml", "--output_dir", out, "--max_steps", 3)
    losses = train_losses(out)
    assert losses and all(math.isfinite(x) for x in losses)
    before = ViFTForConditionalGeneration.from_pretrained(recipe_runs["stage2"]).state_dict()
    after_model = ViFTForConditionalGeneration.from_pretrained(out)
    after = after_model.state_dict()
    assert after_model.config.vpgc_layer == 2
    assert all(torch.equal(before[k], after[k]) for k in before)  # everything else frozen
    assert any(after[k].abs().sum() > 0 for k in after if k.startswith("model.vpgc.output."))  # trained off zero
    assert (out / "vpgc_vift.py").exists()
    load_with_remote_code([out], recipe_runs["out"] / "remote-vpgc")
