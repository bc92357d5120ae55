"""The demo (`python -m demo`) end to end at toy sizes (demo/configs/smoke.yaml), plus its world and scoring.

The smoke run checks the pipeline (files written, metrics computed and in range, the saved folder reloads through
remote code in a fresh process and answers); the demo's accuracy claim lives in its output and the README.
"""

import json
import os
import random

import pytest

from demo import grading as ev
from demo.run import deep_merge, load_config
from demo.tokenizer import build_tokenizer, unknown_words
from demo.world import (
    WorldConfig,
    build_world,
    corpus,
    detailed_caption,
    final_answer,
    parse_caption,
    random_scene,
    scene_facts,
)


SMOKE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "configs", "smoke.yaml")


def _in_unit_range(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke demo as a user runs it (`python -m demo`, quiet console), its console output kept for the tests."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo_smoke")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "demo", "--config", SMOKE, "--output_dir", str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    results["console"] = done.stdout + done.stderr
    return out, results


def test_smoke_run_console_shows_the_table_and_keeps_trainer_logs_and_warnings_in_the_log(smoke_run):
    out, results = smoke_run
    console = results["console"]
    for line in ("stage 0: LM on text tasks (TRL)", "stage 2: captions + text tasks", "fused generation (ViFT)",
                 "fused - plain:", "95% bootstrap interval"):
        assert line in console, line
    for noise in ("{'loss'", "train_runtime", "Warning", "warn(", "skip report"):
        assert noise not in console, noise
    with open(os.path.join(out, "demo.log")) as f:
        log = f.read()
    assert "'loss'" in log and "skip report" in log and "fused generation (ViFT)" in log


def test_smoke_run_writes_model_results_and_heatmap(smoke_run):
    out, results = smoke_run
    for name in ("results.json", "fusion_heatmap.png", "vift-demo/config.json", "vift-demo/modeling_vift.py",
                 "vift-demo/fusion_vift.py", "vift-demo/tokenizer.json", "data/test_visual.json"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "fusion_heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["test"]["fused"]["count"] == 10
    assert saved["validation"]["chosen"] == results["validation"]["chosen"]


def test_smoke_run_metrics_are_computed_and_in_range(smoke_run):
    _, results = smoke_run
    test = results["test"]
    for condition in ("plain", "fused", "text_only_prompt", "true_description"):
        assert _in_unit_range(test[condition]["accuracy"]), condition
        assert _in_unit_range(test[condition]["states_an_answer"]), condition
        assert test[condition]["count"] == 10
        assert all(_in_unit_range(v) for v in test[condition]["by_kind"].values())
    grid = results["validation"]["grid"]
    assert len(grid) == 4 and all(_in_unit_range(g["accuracy"]) and g["count"] == 6 for g in grid)
    assert {g["alignment"] for g in grid} == {"right", "token"}
    chosen = results["validation"]["chosen"]
    assert max(g["accuracy"] for g in grid) == next(
        g["accuracy"] for g in grid if (g["alpha"], g["beta"], g["layers"], g["alignment"]) == (
            chosen["alpha"], chosen["beta"], chosen["layers"], chosen["alignment"]))
    for name in ("fused_minus_plain", "fused_minus_text_only_prompt"):
        c = results["comparisons"][name]
        assert c["low"] <= c["difference"] <= c["high"] and -1.0 <= c["low"] and c["high"] <= 1.0
    for key in ("exact", "object_precision", "object_recall"):
        assert _in_unit_range(results["captions"][key])
    assert _in_unit_range(results["text_qa"]["accuracy"]) and _in_unit_range(results["stage0_text_qa"]["accuracy"])
    assert all(step["seconds"] >= 0 for step in results["seconds"]["steps"])


def test_smoke_run_reloads_through_remote_code_in_a_fresh_process(smoke_run):
    out, results = smoke_run
    reload = results["reload"]
    assert reload["loaded_through_remote_code"] is True
    assert reload["model_class"].startswith("transformers_modules.")
    assert isinstance(reload["plain"], str) and isinstance(reload["fused"], str)
    assert reload["fusion"] == {"alpha": results["validation"]["chosen"]["alpha"],
                                "beta": results["validation"]["chosen"]["beta"],
                                "layers": results["validation"]["chosen"]["layers"],
                                "alignment": results["validation"]["chosen"]["alignment"]}
    with open(os.path.join(out, "vift-demo", "config.json")) as f:
        assert json.load(f)["fusion_layers"] == results["validation"]["chosen"]["layers"]


def test_world_is_deterministic_and_splits_are_disjoint(tmp_path):
    config = WorldConfig(vision_pretrain=4, stage0_text=20, stage1_captions=6, stage2_captions=6, stage2_text=20,
                         val_visual=20, test_visual=20, caption_eval=4, text_eval=10)
    first = build_world(str(tmp_path / "a"), config)
    second = build_world(str(tmp_path / "b"), config)
    for name in first:
        with open(first[name]) as f, open(second[name]) as g:
            assert json.load(f) == json.load(g), name
    with open(first["test_visual"]) as f:
        test = json.load(f)
    with open(first["val_visual"]) as f:
        val = json.load(f)
    assert {r["id"] for r in test}.isdisjoint(r["id"] for r in val)
    images = {p for r in test + val for p in r["images"]}
    for name in ("stage1_captions", "stage2_captions"):
        with open(first[name]) as f:
            assert images.isdisjoint(r["image"] for r in json.load(f))
    # Visual instructions exist only in the evaluation splits: no training record pairs an image with a question.
    with open(first["stage2_captions"]) as f:
        assert all("?" not in r["conversations"][0]["value"] or "picture" in r["conversations"][0]["value"]
                   for r in json.load(f))


def test_world_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="grid must be one of"):
        WorldConfig(grid=5)
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=9)


def test_a_world_with_a_fixed_number_of_shapes_asks_only_questions_that_need_the_image():
    from demo.world import _instance, changed_scene

    config = WorldConfig(min_objects=1, max_objects=1)
    rng = random.Random(0)
    questions = [_instance(rng, config) for _ in range(400)]
    assert not any("How many" in q or "more " in q or "are added" in q for _, _, q, _, _ in questions)
    yes_no = [a for _, kind, _, a, _ in questions if kind == "yes/no"]
    assert 0.4 < yes_no.count("yes") / len(yes_no) < 0.6
    assert any("Where is the" in q for _, _, q, _, _ in questions)
    changes = [q for q in questions if q[1] == "two images"]
    assert changes and all(q[4] == ("colour", "shape", "size", "position") and q[3] in q[4] for q in changes)
    for _ in range(100):
        scene = random_scene(rng, config)
        new, kind = changed_scene(rng, scene, config)
        assert kind != "number" and len(new.objects) == 1 and scene_facts(new, config) != scene_facts(scene, config)


def test_paired_bootstrap_interval_holds_the_difference_and_is_deterministic():
    from demo.run import paired_bootstrap

    first, second = [1] * 30 + [0] * 70, [1] * 10 + [0] * 90
    result = paired_bootstrap(first, second)
    assert result["difference"] == pytest.approx(0.2)
    assert 0.0 < result["low"] < 0.2 < result["high"] < 0.4
    assert paired_bootstrap(first, second) == result
    assert paired_bootstrap([1, 0], [1, 0])["low"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1], [1, 0])


def test_changed_scene_changes_one_thing_even_on_a_full_board():
    from demo.world import changed_scene

    config = WorldConfig(min_objects=3, max_objects=4)
    rng = random.Random(3)
    for _ in range(200):
        scene = random_scene(rng, config)
        new, kind = changed_scene(rng, scene, config)
        if len(scene.objects) == 4:
            assert kind != "position"
        if kind == "number":
            assert len(new.objects) != len(scene.objects)
        else:
            assert len(new.objects) == len(scene.objects) and scene_facts(new, config) != scene_facts(scene, config)


@pytest.mark.parametrize("position_first", [True, False])
def test_caption_round_trip_and_answer_extraction(position_first):
    config = WorldConfig(position_first=position_first)
    rng = random.Random(1)
    for _ in range(50):
        scene = random_scene(rng, config)
        caption = detailed_caption(scene, config)
        assert parse_caption(caption, config) == scene_facts(scene, config)
        assert (" in the " in caption) == position_first
    assert final_answer("The image shows one shape: a small red circle at the top left. So the answer is red.") == "red"
    assert final_answer("The image shows one shape: a small red circle at the top left.") == ""


def test_scoring_needs_a_stated_answer_and_maps_choices():
    record = {"kind": "counting", "answer": "two", "choices": None}
    assert ev.is_correct("The image shows two shapes: ... So the answer is Two.", record)
    assert not ev.is_correct("The image shows two shapes: a small red circle.", record)
    choice = {"kind": "two images", "answer": "colour", "choices": ["colour", "shape", "size", "position", "number"]}
    assert ev.is_correct("So the answer is the colour.", choice)
    assert not ev.is_correct("So the answer is nothing.", choice)
    result = ev.accuracy(["So the answer is two.", "no answer"], [record, record])
    assert result["accuracy"] == 0.5 and result["states_an_answer"] == 0.5
    with pytest.raises(ValueError, match="responses for"):
        ev.accuracy(["x"], [record, record])


def test_tokenizer_keeps_world_words_whole(tmp_path):
    config = WorldConfig(vision_pretrain=2, stage0_text=200, stage1_captions=20, stage2_captions=20, stage2_text=50,
                         val_visual=2, test_visual=2, caption_eval=2, text_eval=2)
    texts = corpus(build_world(str(tmp_path), config))
    tokenizer = build_tokenizer(texts, vocab_size=512)
    assert unknown_words(tokenizer, ["in the top left a small red circle"]) == []
    assert tokenizer.convert_tokens_to_ids("<image>") != tokenizer.unk_token_id
    assert "<|im_start|>user" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    with pytest.raises(ValueError, match="non-empty"):
        build_tokenizer([])


def test_demo_config_merges_base_and_rejects_incomplete(tmp_path):
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    config = load_config(SMOKE)
    assert config["world"]["test_visual"] == 10 and config["text_model"]["num_hidden_layers"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\n")
    with pytest.raises(ValueError, match="lacks the `world` section"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))
