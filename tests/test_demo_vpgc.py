"""The VPG-C step on top of a demo output (`python -m demo.vpgc`), at toy sizes (demo/configs/vpgc_smoke.yaml).

The smoke run checks the pipeline (data, training, the four measured conditions, the saved folder reloading through
remote code in a fresh process); what VPG-C does to the accuracy lives in its output, not in these tests.
"""

import json
import os
import random
import shutil

import pytest

from demo.run import load_config as load_demo_config
from demo.vpgc import (
    CONDITIONS,
    QUESTION_KINDS,
    describe_difference,
    load_config,
    load_demo_output,
    run_vpgc,
)
from demo.world import CHANGE_OPTIONS, WorldConfig, changed_scene, parse_caption, random_scene


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "configs")
SMOKE = os.path.join(CONFIGS, "smoke.yaml")
VPGC_SMOKE = os.path.join(CONFIGS, "vpgc_smoke.yaml")


def _in_unit_range(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def vpgc_run(tmp_path_factory):
    from demo.run import run_demo

    demo_output = tmp_path_factory.mktemp("demo_smoke")
    run_demo(load_demo_config(SMOKE), str(demo_output), reload=False)
    results = run_vpgc(str(demo_output), load_config(VPGC_SMOKE))
    return demo_output, os.path.join(demo_output, "vpgc"), results


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_vpgc_smoke_run_writes_data_model_and_results(vpgc_run):
    _, out, results = vpgc_run
    for name in ("vpgc_results.json", "data/vpgc_mixture.yaml", "data/spot_the_difference.json", "data/captions.json",
                 "data/val.json", "data/test.json", "models/vpgc/vpgc_recipe.yaml", "vift-vpgc/config.json",
                 "vift-vpgc/vpgc_vift.py", "vift-vpgc/modeling_vift.py", "vift-vpgc/tokenizer.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert _read(os.path.join(out, "vpgc_results.json"))["test"]["with_vpgc"]["fused"]["count"] == 8
    assert results["command"].startswith("python -m recipes.vpgc_train --config ")
    assert len(_read(os.path.join(out, "data/spot_the_difference.json"))) == 24


def test_vpgc_smoke_run_measures_four_conditions_by_kind(vpgc_run):
    _, _, results = vpgc_run
    for split, count in (("validation", 4), ("test", 8)):
        for condition in CONDITIONS:
            for mode in ("plain", "fused"):
                result = results[split][condition][mode]
                assert result["count"] == count and _in_unit_range(result["accuracy"]), (split, condition, mode)
                assert set(result["by_kind"]) <= set(QUESTION_KINDS)
                assert all(_in_unit_range(v) for v in result["by_kind"].values())
    for control in ("text_only_prompt", "true_description"):
        assert _in_unit_range(results["test"]["controls"][control]["accuracy"])
    vpgc = results["vpgc"]
    assert vpgc["layer"] == 2 and vpgc["parameters"] > 0 and 0.0 < vpgc["share"] < 1.0
    assert results["training"]["seconds"] >= 0 and results["seconds"]["total"] >= 0


def test_vpgc_model_reloads_through_remote_code(vpgc_run):
    from transformers import AutoModel

    _, out, results = vpgc_run
    reload = results["reload"]
    assert reload["loaded_through_remote_code"] is True
    assert reload["model_class"].startswith("transformers_modules.")
    assert isinstance(reload["plain"], str) and isinstance(reload["fused"], str)
    model = AutoModel.from_pretrained(os.path.join(out, "vift-vpgc"), trust_remote_code=True)
    assert model.config.vpgc_layer == 2 and model.model.vpgc is not None


def test_spot_the_difference_pairs_differ_in_one_attribute_named_by_the_answer(vpgc_run):
    demo_output, out, _ = vpgc_run
    config = WorldConfig(**_read(os.path.join(demo_output, "data", "world_config.json")))
    records = _read(os.path.join(out, "data", "spot_the_difference.json"))
    for record in records:
        assert len(record["image"]) == 2 and record["conversations"][0]["value"].count("<image>") == 2
        before, after = (parse_caption(d, config) for d in record["descriptions"])
        only_before, only_after = before - after, after - before
        answer = record["conversations"][1]["value"]
        if record["kind"] == "number":
            assert len(only_before) + len(only_after) == 1
            assert answer.startswith("The number of shapes changed:")
        else:
            assert len(only_before) == len(only_after) == 1
            old, new = only_before.pop(), only_after.pop()
            changed = [i for i in range(4) if old[i] != new[i]]
            assert len(changed) == 1
            assert ("size", "colour", "shape", "position")[changed[0]] == record["kind"]
            assert answer.startswith(f"The {record['kind']} changed:")
            assert old[changed[0]] in answer and new[changed[0]] in answer


def test_describe_difference_names_every_kind_of_change():
    for position_first in (True, False):
        config = WorldConfig(position_first=position_first)
        rng = random.Random(0)
        seen = set()
        for _ in range(300):
            first = random_scene(rng, config)
            second, kind = changed_scene(rng, first, config)
            described, sentence = describe_difference(first, second, config)
            assert described == kind
            assert (kind if kind != "number" else "number of shapes") in sentence
            seen.add(kind)
        assert seen == set(CHANGE_OPTIONS)


def test_held_out_tasks_are_never_trained_on(vpgc_run):
    _, out, _ = vpgc_run
    trained = {tuple(r["descriptions"]) for r in _read(os.path.join(out, "data", "spot_the_difference.json"))}
    for split in ("val", "test"):
        records = _read(os.path.join(out, "data", f"{split}.json"))
        assert all(r["kind"] in QUESTION_KINDS and len(r["images"]) == 2 for r in records)
        assert trained.isdisjoint(tuple(r["descriptions"]) for r in records)


def test_missing_demo_output_is_a_clear_error(tmp_path, vpgc_run):
    demo_output, _, _ = vpgc_run
    with pytest.raises(FileNotFoundError, match="does not exist: run `python -m demo` first"):
        load_demo_output(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"results\.json is missing.*python -m demo"):
        load_demo_output(str(tmp_path))
    partial = tmp_path / "partial"
    os.makedirs(partial / "data")
    shutil.copy(os.path.join(demo_output, "results.json"), partial / "results.json")
    shutil.copy(os.path.join(demo_output, "data", "world_config.json"), partial / "data" / "world_config.json")
    with pytest.raises(FileNotFoundError, match=r"models/stage2/config\.json is missing.*python -m demo"):
        load_demo_output(str(partial))


def test_vpgc_config_rejects_bad_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {VPGC_SMOKE}\ndata: {{pairs: 0}}\n")
    with pytest.raises(ValueError, match=r"data\.pairs must be a whole number"):
        load_config(str(bad))
    bad.write_text("seed: 0\n")
    with pytest.raises(ValueError, match="lacks the `data` section"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
