"""End to end: the evaluation and sweep recipes on the fixtures with a tiny saved model (loaded as a user would,
with trust_remote_code), resume after interruption, and 2-process sharding merged to the same scores."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from eval_support import DATA_FILES, materialize_fixtures, save_tiny_model

from modeling_vift.evaluation import (
    EvalConfig,
    EvaluationFailed,
    SweepConfig,
    evaluate_benchmark,
    load_benchmark,
    score_records,
)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return materialize_fixtures(str(tmp_path_factory.mktemp("eval_data")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny_vift")))


def run_recipe(module, argv):
    """Parses `argv` with the recipe's own parser (YAML config + overrides) and runs its main()."""
    recipe = __import__(f"recipes.{module}", fromlist=["main"])
    (arguments,) = recipe.make_parser().parse_args_and_config(args=argv)
    return recipe.main(arguments)


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_predictions(output_dir):
    with open(os.path.join(output_dir, "predictions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize(
    "benchmark, config, evaluated, skipped",
    [
        ("mathvista", "eval_mathvista.yaml", 4, {"missing image": 1, "unknown answer_type": 1}),
        ("mathverse", "eval_mathverse.yaml", 3, {"missing image": 1}),
        ("mathvision", "eval_mathvision.yaml", 3, {"line 5": 0, "invalid JSON": 1, "unknown answer": 1}),
        ("demon", "eval_demon.yaml", 10, {"image placeholder mismatch": 1, "unparsable choice list": 1}),
        ("llava_bench", "eval_llava_bench.yaml", 3, {}),
    ],
)
def test_each_benchmark_recipe_runs_end_to_end_on_the_fixtures(benchmark, config, evaluated, skipped, data, model_dir, tmp_path):
    out = str(tmp_path / benchmark)
    result = run_recipe("evaluate_benchmark", [
        "--config", os.path.join(REPO, "recipes", config), "--model_name_or_path", model_dir,
        "--data_path", os.path.join(data, DATA_FILES[benchmark]), "--output_dir", out,
        "--max_new_tokens", "6", "--batch_size", "2", "--progress", "false",
    ])
    stats, report, scores = result["stats"], result["report"], result["scores"]
    assert stats["num_samples"] == evaluated and stats["generated"] == evaluated and stats["errors"] == 0
    assert report["skipped_counts"] == {k: v for k, v in skipped.items() if v}
    records = read_predictions(out)
    assert len(records) == evaluated and all(r["error"] is None for r in records)
    with_images = [r for r in records if r["sample"]["num_images"]]
    # no fusion value in the YAMLs: all come from the model (upper half of its 4 layers, alpha / beta 0.5, the authors'
    # right alignment)
    fusion = {"fusion": True, "fusion_alpha": 0.5, "fusion_beta": 0.5, "fusion_layers": [2, 4], "fusion_alignment": "right"}
    assert with_images and all(r["fusion"] == fusion for r in with_images)
    for name in ("scores.json", "report.json", "summary.md", "run_config.json"):
        assert os.path.exists(os.path.join(out, name))
    if benchmark == "llava_bench":
        answers = [json.loads(line) for line in open(os.path.join(out, "answers.jsonl"))]
        assert [a["question_id"] for a in answers] == ["0", "1", "2"] and scores["num_answers"] == 3
    elif benchmark == "demon":
        assert set(scores["per_category"]) == {"Knowledge Grounded QA", "Multi-Image Reasoning", "Multi-Modal Cloze",
                                               "Multi-Modal Dialogue", "Visual Relation Inference"}
        alfred = scores["per_task"]["ALFRED"]  # empty question_type in the release: scored as open-ended
        assert alfred["metric"] == "rouge_l" and alfred["category"] == "Multi-Modal Dialogue" and alfred["n"] == 1
        assert 0.0 <= scores["overall"] <= 1.0 and len(scores["scores"]) == evaluated
    else:
        assert scores["total"] == evaluated and 0.0 <= scores["accuracy"] <= 1.0
        listed = set(scores["unparsed"]) | set(scores["empty"])
        assert {p["id"] for p in report["unparsed_predictions"]} | set(report["empty_predictions"]) == listed
        assert all(scores["scores"][i] == 0.0 for i, r in enumerate(records) if r["id"] in listed)


def test_fixture_answers_score_as_hand_counted(data):
    """The scoring path of the recipes (records as stored in predictions.jsonl -> evaluate module) on known answers."""
    def records(benchmark, answers):
        samples = load_benchmark(benchmark, os.path.join(data, DATA_FILES[benchmark])).samples
        return [{"id": s.id, "prediction": answers[s.id], "error": None, "sample": s.scoring_fields()} for s in samples]

    mathvista = score_records("mathvista", records("mathvista", {"1": "The answer is (B)", "2": "7", "3": "0.54", "4": "[2, 4, 5]"}))
    assert mathvista["scores"] == [1.0, 1.0, 1.0, 0.0] and mathvista["accuracy"] == 0.75
    judged = score_records("mathvista", records("mathvista", {"1": "the big one", "2": "seven", "3": "0.54", "4": ""}),
                           extractor=lambda response, fields: {"the big one": "B", "seven": "7"}.get(response))
    assert judged["scores"] == [1.0, 1.0, 1.0, 0.0] and judged["empty"] == ["4"]  # the judge is optional and per sample
    mathverse = score_records("mathverse", records("mathverse", {"1": "C", "2": "The diameter is 6.", "3": "1.5"}))
    assert mathverse["scores"] == [1.0, 1.0, 1.0] and set(mathverse["per_group"]) == {"Text Dominant", "Vision Intensive", "Text Only"}
    mathvision = score_records("mathvision", records("mathvision", {"1": "(D)", "2": "11", "3": "1/3"}))
    assert mathvision["scores"] == [1.0, 0.0, 1.0]
    demon = score_records("demon", records("demon", {
        "NLVR2/0": "true", "NLVR2/1": "It is true.", "RecipeQA_VisualCloze/0": "Image B",
        "Spot-the-Diff/0": "the blue square moved to the left", "Spot-the-Diff/1": "the red circle is gone",
        "MultiModalQA/0": "baseball", "MultiModalQA/1": "The shirt is red.", "MMCoQA/2": "a silver trophy",
        "ALFRED/3": "Turn around and carry the mug to the sink.", "COMICS_Dialogue/0": "keep it up boy"}),
        protocol="strict")  # strict ROUGE-L counts every word; the official one counts unique words
    rouge_first = 2 * 1.0 * (7 / 12) / (1.0 + 7 / 12)  # LCS 7 words of a 7-word prediction and a 12-word reference
    assert demon["per_task"]["NLVR2"]["score"] == 0.5 and demon["per_task"]["RecipeQA_VisualCloze"]["score"] == 1.0
    assert demon["per_task"]["Spot-the-Diff"]["score"] == pytest.approx((rouge_first + 1.0) / 2)
    assert demon["per_task"]["MultiModalQA"]["score"] == 0.5 and demon["per_task"]["COMICS_Dialogue"]["score"] == 1.0
    assert demon["per_task"]["ALFRED"]["score"] == 1.0 and demon["per_task"]["MMCoQA"]["score"] == 1.0
    categories = {"Multi-Image Reasoning": 0.5, "Multi-Modal Cloze": 1.0, "Visual Relation Inference": (rouge_first + 1.0) / 2,
                  "Knowledge Grounded QA": 0.5, "Multi-Modal Dialogue": 1.0}
    assert {c: v["score"] for c, v in demon["per_category"].items()} == pytest.approx(categories)
    assert demon["overall"] == pytest.approx(sum(categories.values()) / 5)


def test_interrupted_run_resumes_where_it_stopped(data, model_dir, tmp_path):
    out = str(tmp_path / "run")
    argv = ["--benchmark", "mathvista", "--data_path", os.path.join(data, DATA_FILES["mathvista"]), "--output_dir", out,
            "--model_name_or_path", model_dir, "--max_new_tokens", "6", "--fusion", "true", "--progress", "false"]
    first = run_recipe("evaluate_benchmark", argv)
    complete = read_predictions(out)
    # interruption: only the first record was written completely, the second one was cut mid-line, nothing merged
    shard = os.path.join(out, "shards", "rank000-of-001.jsonl")
    lines = open(shard).read().splitlines(keepends=True)
    with open(shard, "w") as f:
        f.write(lines[0] + lines[1][: len(lines[1]) // 2])
    for name in ("predictions.jsonl", "scores.json"):
        os.remove(os.path.join(out, name))
    resumed = run_recipe("evaluate_benchmark", argv)
    assert resumed["stats"]["resumed"] == 1 and resumed["stats"]["generated"] == 3 and resumed["stats"]["broken_lines"] == 1
    assert [(r["id"], r["prediction"]) for r in read_predictions(out)] == [(r["id"], r["prediction"]) for r in complete]
    assert resumed["scores"]["scores"] == first["scores"]["scores"]
    again = run_recipe("evaluate_benchmark", argv)  # a finished run only merges and scores
    assert again["stats"]["generated"] == 0 and again["stats"]["resumed"] == 4
    with pytest.raises(ValueError, match="other settings"):
        run_recipe("evaluate_benchmark", argv + ["--fusion_alpha", "2.0"])


def test_two_processes_merge_to_the_same_scores_as_one(data, model_dir, tmp_path):
    common = ["--benchmark", "demon", "--data_path", os.path.join(data, DATA_FILES["demon"]), "--model_name_or_path", model_dir,
              "--max_new_tokens", "6", "--batch_size", "1", "--fusion", "true", "--progress", "false"]
    single = run_recipe("evaluate_benchmark", common + ["--output_dir", str(tmp_path / "one")])
    # `accelerate launch --cpu` starts a single process (its multi-process CPU path needs MPI); on a machine without
    # CUDA the multi-process launcher (torchrun underneath) runs the processes on the CPU over gloo.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "recipes.evaluate_benchmark", *common, "--output_dir", str(tmp_path / "two")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(os.listdir(tmp_path / "two" / "shards"))
    assert shards == ["rank000-of-002.jsonl", "rank001-of-002.jsonl"]
    assert all(os.path.getsize(tmp_path / "two" / "shards" / s) > 0 for s in shards)  # both processes generated
    two = json.load(open(tmp_path / "two" / "scores.json"))
    assert two["stats"]["num_processes"] == 2
    assert [(r["id"], r["prediction"]) for r in read_predictions(str(tmp_path / "two"))] == \
        [(r["id"], r["prediction"]) for r in read_predictions(str(tmp_path / "one"))]
    for key in ("overall", "per_category", "per_task", "scores", "unparsed", "empty"):
        assert two["scores"][key] == single["scores"][key]


def test_fusion_sweep_writes_heatmap_best_setting_and_model_config(data, model_dir, tmp_path):
    from transformers import AutoConfig

    model_copy = str(tmp_path / "model")
    shutil.copytree(model_dir, model_copy)
    out = str(tmp_path / "sweep")
    result = run_recipe("sweep_fusion", [
        "--config", os.path.join(REPO, "recipes", "eval_sweep_fusion.yaml"), "--model_name_or_path", model_copy,
        "--data_path", os.path.join(data, DATA_FILES["mathvista"]), "--output_dir", out, "--max_samples", "2",
        "--alphas", "0.5", "1.5", "--betas", "0.25", "--layer_ranges", "2:4", "0:4", "--max_new_tokens", "4",
        "--batch_size", "2", "--write_best_to", "both", "--progress", "false",
    ])
    assert [r["tag"] for r in result["results"]] == ["baseline", "layers2-4_alpha0.5_beta0.25", "layers2-4_alpha1.5_beta0.25",
                                                     "layers0-4_alpha0.5_beta0.25", "layers0-4_alpha1.5_beta0.25"]
    fused = [r for r in result["results"] if r["fusion"]]
    best = max(fused, key=lambda r: r["score"])  # first of the highest: the documented tie-break
    saved = json.load(open(os.path.join(out, "best_fusion.json")))
    assert (saved["fusion_alpha"], saved["fusion_beta"], saved["fusion_layers"]) == (best["fusion_alpha"], 0.25, best["fusion_layers"])
    assert saved["num_validation_samples"] == 2 and saved["score"] == best["score"]
    with open(os.path.join(out, "heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ids = open(os.path.join(out, "validation_ids.txt")).read().split()
    assert len(ids) == 2 and set(ids) <= {"1", "2", "3", "4"}  # a seeded random subset (sample_seed in the YAML)
    config = AutoConfig.from_pretrained(model_copy, trust_remote_code=True)
    assert (config.fusion_alpha, config.fusion_beta, list(config.fusion_layers)) == (best["fusion_alpha"], 0.25, best["fusion_layers"])
    generation_config = json.load(open(os.path.join(model_copy, "generation_config.json")))
    assert generation_config["fusion_alpha"] == best["fusion_alpha"] and generation_config["fusion_layers"] == best["fusion_layers"]
    # README's next command (the shipped YAML, no fusion flags) uses the tuned setting and leaves the validation samples out
    evaluation = run_recipe("evaluate_benchmark", [
        "--config", os.path.join(REPO, "recipes", "eval_mathvista.yaml"), "--data_path", os.path.join(data, DATA_FILES["mathvista"]),
        "--output_dir", str(tmp_path / "eval"), "--model_name_or_path", model_copy,
        "--exclude_ids_file", os.path.join(out, "validation_ids.txt"), "--max_new_tokens", "4", "--progress", "false",
    ])
    records = read_predictions(str(tmp_path / "eval"))
    assert [r["id"] for r in records] == sorted({"1", "2", "3", "4"} - set(ids)) and evaluation["stats"]["num_samples"] == 2
    tuned = {"fusion": True, "fusion_alpha": best["fusion_alpha"], "fusion_beta": 0.25, "fusion_layers": best["fusion_layers"],
             "fusion_alignment": "right"}  # the default search: the authors' alignment only
    assert all(r["fusion"] == tuned for r in records if r["sample"]["num_images"])
    assert "| 0." in result["table"] and "%" not in result["table"]  # fractions, as in the JSON files


def test_fusion_sweep_searches_the_alignment_and_hands_the_chosen_one_to_evaluate(data, model_dir, tmp_path):
    """`fusion_alignments: [right, token]`: every grid point is run and recorded with its alignment, the heatmap has a
    panel per layer range and alignment, and `--write_best_to` stores the chosen alignment so that the next
    `evaluate_benchmark` (no fusion flags) generates with it."""
    model_copy = str(tmp_path / "model")
    shutil.copytree(model_dir, model_copy)
    out = str(tmp_path / "sweep")
    result = run_recipe("sweep_fusion", [
        "--config", os.path.join(REPO, "recipes", "eval_sweep_fusion.yaml"), "--model_name_or_path", model_copy,
        "--data_path", os.path.join(data, DATA_FILES["demon"]), "--benchmark", "demon", "--output_dir", out,
        "--max_samples", "3", "--alphas", "0.5", "1.5", "--betas", "0.25", "--layer_ranges", "2:4",
        "--fusion_alignments", "right", "token", "--max_new_tokens", "4", "--batch_size", "2", "--write_best_to", "both",
        "--progress", "false",
    ])
    fused = [r for r in result["results"] if r["fusion"]]
    assert [(r["tag"], r["fusion_alignment"]) for r in fused] == [
        ("layers2-4_alpha0.5_beta0.25", "right"), ("layers2-4_alpha1.5_beta0.25", "right"),
        ("layers2-4_alpha0.5_beta0.25_token", "token"), ("layers2-4_alpha1.5_beta0.25_token", "token")]
    for r in fused:  # each run generated with the alignment it is recorded under
        records = read_predictions(os.path.join(out, "runs", r["tag"]))
        assert all(p["fusion"]["fusion_alignment"] == r["fusion_alignment"] for p in records if p["sample"]["num_images"])
    saved = json.load(open(os.path.join(out, "sweep_results.json")))
    assert saved["fusion_alignments"] == ["right", "token"]
    assert [r["fusion_alignment"] for r in saved["results"]] == [None, "right", "right", "token", "token"]
    best = max(fused, key=lambda r: r["score"])  # first of the highest: ties go to the right alignment
    assert saved["best"]["fusion_alignment"] == best["fusion_alignment"]
    assert json.load(open(os.path.join(out, "best_fusion.json")))["fusion_alignment"] == best["fusion_alignment"]
    assert "| token | [2, 4) |" in result["table"] and f"alignment={best['fusion_alignment']}" in result["table"]
    with open(os.path.join(out, "heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("config.json", "generation_config.json"):
        assert json.load(open(os.path.join(model_copy, name)))["fusion_alignment"] == best["fusion_alignment"]

    # the hand-off for the other alignment too: write it as a sweep's best, then evaluate with the model's defaults
    from modeling_vift.evaluation import write_fusion_setting

    for alignment in ("token", "right"):
        write_fusion_setting(model_copy, dict(best, fusion_alignment=alignment), "generation_config")
        evaluation = run_recipe("evaluate_benchmark", [
            "--config", os.path.join(REPO, "recipes", "eval_demon.yaml"), "--data_path", os.path.join(data, DATA_FILES["demon"]),
            "--output_dir", str(tmp_path / f"eval_{alignment}"), "--model_name_or_path", model_copy, "--max_new_tokens", "4",
            "--progress", "false",
        ])
        assert evaluation["generation"].fusion_alignment == alignment
        records = read_predictions(str(tmp_path / f"eval_{alignment}"))
        assert all(r["fusion"]["fusion_alignment"] == alignment for r in records if r["sample"]["num_images"])
    with pytest.raises(ValueError, match="fusion_alignment must be one of"):
        SweepConfig(benchmark="demon", data_path="x", output_dir="y", fusion_alignments=["right", "left"])
    with pytest.raises(ValueError, match="fusion_alignment must be one of"):
        EvalConfig(benchmark="demon", data_path="x", output_dir="y", fusion=True, fusion_alignment="left")


def test_bad_samples_are_recorded_and_scored_zero_not_raised(data, model_dir, tmp_path):
    from modeling_vift.evaluation.pipeline import load_model_and_processor

    records = json.load(open(os.path.join(data, DATA_FILES["mathvista"])))
    long_record = dict(records["2"], pid="long", image="ok.png", query="How many dots? " * 400)  # longer than the model's 512 positions
    corrupt = dict(records["2"], pid="corrupt", image="corrupt.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    shutil.copy(os.path.join(data, records["1"]["image"]), tmp_path / "ok.png")
    good = dict(records["1"], image="ok.png")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, long_record, corrupt]))
    model, processor = load_model_and_processor(model_dir)
    config = EvalConfig(benchmark="mathvista", data_path=str(path), output_dir=str(tmp_path / "out"), model_name_or_path=model_dir,
                        max_new_tokens=4, batch_size=3, progress=False, max_failed_share=1.0)
    result = evaluate_benchmark(config, model=model, processor=processor)
    errors = {e["id"]: e["error"] for e in result["report"]["generation_errors"]}
    assert set(errors) == {"long", "corrupt"}
    assert errors["long"].startswith("generation error: ValueError") and "max_position_embeddings" in errors["long"]
    assert errors["corrupt"].startswith("image error")
    assert result["scores"]["scores"][1:] == [0.0, 0.0] and result["scores"]["total"] == 3
    assert result["report"]["empty_predictions"] == []  # failed generations are listed once, as errors
    assert "generation errors (scored 0) | 2" in result["summary"]

    # with the default max_failed_share (0.1), 2 failures of 3 samples is a failed run, with the reasons
    config = EvalConfig(benchmark="mathvista", data_path=str(path), output_dir=str(tmp_path / "strict"), max_new_tokens=4,
                        batch_size=3, progress=False)
    with pytest.raises(EvaluationFailed, match=r"(?s)2 of 3 samples failed to generate.*image error.*max_failed_share"):
        evaluate_benchmark(config, model=model, processor=processor)
    assert os.path.exists(tmp_path / "strict" / "report.json")  # the outputs are written before the failure is raised


def test_a_run_with_no_evaluated_sample_exits_non_zero_with_the_reasons(tmp_path):
    """Every record skipped (here: images not materialised yet) is refused before a model loads, exit status 1."""
    records = json.load(open(os.path.join(REPO, "tests", "fixtures", "eval", DATA_FILES["mathvista"])))
    path = tmp_path / "no_images.json"
    path.write_text(json.dumps({k: dict(r, image="missing/" + str(r.get("image"))) for k, r in records.items()}))
    config = EvalConfig(benchmark="mathvista", data_path=str(path), output_dir=str(tmp_path / "out"),
                        model_name_or_path=str(tmp_path / "never-loaded"), progress=False)
    with pytest.raises(EvaluationFailed, match=r"(?s)No sample was evaluated: all 6 records were skipped.*5 x skipped, missing image"):
        evaluate_benchmark(config)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "recipes.evaluate_benchmark", "--benchmark", "mathvista", "--data_path", str(path),
                           "--output_dir", str(tmp_path / "cli"), "--model_name_or_path", str(tmp_path / "never-loaded")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "No sample was evaluated" in done.stderr and "Traceback" not in done.stderr


def test_fusion_layers_that_do_not_fit_the_model_are_refused_before_generation(data, model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"(?s)fusion_layers=\[0, 28\) is invalid for a language model with 4 layers.*"
                                         r"own setting is \[2, 4\]: leave fusion_layers unset"):
        run_recipe("evaluate_benchmark", [
            "--config", os.path.join(REPO, "recipes", "eval_mathvista.yaml"), "--model_name_or_path", model_dir,
            "--data_path", os.path.join(data, DATA_FILES["mathvista"]), "--output_dir", str(out), "--fusion_layers", "0:28",
            "--progress", "false"])
    assert not out.exists()  # nothing generated
    with pytest.raises(ValueError, match="start:end"):
        EvalConfig(benchmark="mathvista", data_path="x", output_dir="y", fusion_layers="14..28")


def test_the_recipes_parse_their_yaml_into_the_library_configs():
    """The dataclasses are the command line: every shipped evaluation YAML parses into EvalConfig / SweepConfig, and
    none of them fixes the fusion layers of one model size."""
    from recipes import evaluate_benchmark, sweep_fusion

    for name in sorted(os.listdir(os.path.join(REPO, "recipes"))):
        if not (name.startswith("eval_") and name.endswith(".yaml")):
            continue
        sweep = name == "eval_sweep_fusion.yaml"
        parser = (sweep_fusion if sweep else evaluate_benchmark).make_parser()
        (config,) = parser.parse_args_and_config(args=["--config", os.path.join(REPO, "recipes", name)])
        assert isinstance(config, SweepConfig if sweep else EvalConfig)
        if sweep:
            assert config.layer_ranges == ["all", "upper_half"]
        else:
            assert config.fusion_layers is None and config.fusion_alpha is None and config.fusion_beta is None
