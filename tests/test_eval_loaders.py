"""Benchmark readers on fixtures in each published format: prompts, images, and bad input counted with reasons."""

import json
import os

import pytest
from eval_support import materialize_fixtures

from modeling_vift.evaluation import DataError, load_benchmark
from modeling_vift.evaluation.demon import (
    CATEGORIES,
    map_placeholders,
    parse_choice_list,
    task_category,
    task_identity,
)
from modeling_vift.evaluation.runner import render_prompt
from modeling_vift.evaluation.samples import open_image


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return materialize_fixtures(str(tmp_path_factory.mktemp("eval_data")))


def reasons(result):
    return {item["id"]: item["reason"] for item in result.skipped}


def test_mathvista_uses_the_published_query_and_reports_bad_records(data):
    result = load_benchmark("mathvista", os.path.join(data, "mathvista_testmini.json"))
    assert [s.id for s in result.samples] == ["1", "2", "3", "4"]
    skipped = reasons(result)
    assert skipped["5"].startswith("missing image") and "missing_5.png" in skipped["5"]
    assert skipped["6"].startswith("unknown answer_type") and "'fraction'" in skipped["6"]
    first = result.samples[0]
    assert first.prompt.startswith("<image>\nHint: Please answer the question and provide the correct option letter")
    assert first.choices == ["circle", "square", "triangle"] and first.reference == "square"
    assert first.group == "figure question answering" and len(first.images) == 1
    assert result.samples[2].precision == 1.0 and result.samples[2].answer_type == "float"
    built = load_benchmark("mathvista", os.path.join(data, "mathvista_testmini.json"), prompt_style="built")
    assert built.samples[0].prompt.endswith("(C) triangle\nAnswer with the letter of the correct choice.")
    assert built.samples[2].prompt.endswith("Answer with a number with 1 decimal place.")


def test_mathverse_keeps_text_only_problems_without_an_image(data):
    result = load_benchmark("mathverse", os.path.join(data, "mathverse_testmini.json"))
    by_id = {s.id: s for s in result.samples}
    assert sorted(by_id) == ["1", "2", "3"] and reasons(result)["4"].startswith("missing image")
    assert by_id["3"].images == [] and "<image>" not in by_id["3"].prompt
    assert by_id["1"].question_type == "multi_choice" and by_id["1"].reference == "C"
    assert by_id["1"].choices == ["40°", "50°", "130°", "140°"]  # parsed from the question for the scorer
    assert by_id["2"].answer_type == "number" and by_id["2"].group == "Vision Intensive"
    assert "directly answer" in by_id["1"].prompt
    cot = load_benchmark("mathverse", os.path.join(data, "mathverse_testmini.json"), query_field="query_cot")
    assert "first conduct reasoning" in cot.samples[0].prompt


def test_mathvision_strips_image_tags_and_counts_broken_lines(data):
    result = load_benchmark("mathvision", os.path.join(data, "mathvision_test.jsonl"))
    assert [s.id for s in result.samples] == ["1", "2", "3"]
    skipped = reasons(result)
    assert skipped["line 5"].startswith("invalid JSON")
    assert skipped["4"].startswith("unknown answer") and "'F'" in skipped["4"]
    first, third = result.samples[0], result.samples[2]
    assert first.prompt.count("<image>") == 1 and "<image1>" not in first.prompt
    assert first.question_type == "multi_choice" and "(E) E" in first.prompt
    assert third.question_type == "free_form" and third.answer_type == "number" and third.reference == "\\frac{1}{3}"


def test_demon_maps_image_placeholders_onto_interleaved_images(data):
    result = load_benchmark("demon", os.path.join(data, "demon"))
    by_id = {s.id: s for s in result.samples}
    assert sorted(by_id) == ["ALFRED/3", "COMICS_Dialogue/0", "MMCoQA/2", "MultiModalQA/0", "MultiModalQA/1", "NLVR2/0",
                             "NLVR2/1", "RecipeQA_VisualCloze/0", "Spot-the-Diff/0", "Spot-the-Diff/1"]
    assert reasons(result)["NLVR2/2"].startswith("image placeholder mismatch")
    cloze = by_id["RecipeQA_VisualCloze/0"]
    assert cloze.prompt.startswith("Read the recipe steps")  # instruction template, then the context
    assert cloze.prompt.count("<image>") == 4 and "{image#" not in cloze.prompt
    assert [os.path.basename(p) for p in cloze.images] == ["c0_1.png", "c0_2.png", "c0_a.png", "c0_b.png"]
    assert cloze.choices == ["Image A", "Image B"] and cloze.category == "Multi-Modal Cloze"
    assert by_id["NLVR2/1"].choices == ["True", "False"]  # read from the context's Choice List
    assert by_id["NLVR2/1"].prompt.startswith("Judge whether")  # task_instruction_id 1
    assert by_id["Spot-the-Diff/0"].question_type == "open-ended"
    assert by_id["Spot-the-Diff/0"].category == "Visual Relation Inference"


def test_placeholder_order_and_categories_follow_the_published_layout():
    text, order, error = map_placeholders("first {image#2}, then {image#1} and {image#2} again", 2)
    assert error is None and order == [1, 0, 1] and text == "first <image>, then <image> and <image> again"
    assert map_placeholders("{image#1}{image#3}", 3)[2].startswith("image placeholder mismatch")
    assert parse_choice_list("Q?Choice List:['yes', 'no']Answer:") == (["yes", "no"], None)
    assert task_category("recipeqa-RecipeQA_VisualCloze") == "Multi-Modal Cloze"
    assert task_identity("/x/Text-Rich Images QA/Something/core/core.json") == ("Something", "Text-Rich Images QA")
    assert task_category("UnknownTask") is None


def test_demon_unknown_categories_and_non_task_files_are_reported(tmp_path):
    def task(dataset, question_type):
        return {"metadata": {"dataset": dataset, "task_instruction": ["Do it. "], "question_type": question_type},
                "data": [{"sample_id": 0, "task_instruction_id": 0, "task_instance": {"context": "x", "images_path": []},
                          "response": "y"}]}

    (tmp_path / "task.json").write_text(json.dumps(task("NewTask", "open-ended")))  # no category folder, unknown name
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    essay = tmp_path / "Visual Storytelling" / "Essays" / "core"
    essay.mkdir(parents=True)
    (essay / "core.json").write_text(json.dumps(task("", "essay")))
    result = load_benchmark("demon", str(tmp_path))
    assert result.samples == []
    skipped = reasons(result)
    assert skipped["NewTask/0"].startswith("unknown category: task 'NewTask'") and "<category>/<task>/core/core.json" in skipped["NewTask/0"]
    assert skipped["Essays/0"].startswith("unknown question_type: 'essay'")
    assert skipped[str(tmp_path / "other.json")].startswith("not a DEMON task file")
    assert result.skip_counts() == {"unknown category": 1, "unknown question_type": 1, "not a DEMON task file": 1}


def test_demon_tables_are_images_numbered_with_the_images(data):
    by_id = {s.id: s for s in load_benchmark("demon", os.path.join(data, "demon")).samples}
    table = by_id["MultiModalQA/1"]  # "Global Table: {table#1} Context: {image#2} ..."
    assert "{table#" not in table.prompt and "{image#" not in table.prompt
    assert "Global Table: <image> Context: <image> Question:" in table.prompt
    assert [os.path.basename(p) for p in table.images] == ["2.png", "3.jpg"]
    dialogue = by_id["MMCoQA/2"]  # two tables ({table#1}, {table#2}, the same file twice) and {image#3}
    assert dialogue.prompt.count("<image>") == 3 and [os.path.basename(p) for p in dialogue.images] == ["2.png", "2.png", "3.jpg"]
    assert dialogue.category == "Multi-Modal Dialogue" and dialogue.question_type == "open-ended"
    text, order, error = map_placeholders("{table#1} then {image#2}", 2)
    assert error is None and order == [0, 1] and text == "<image> then <image>"
    assert map_placeholders("{table#1} then {image#3}", 2)[2].startswith("image placeholder mismatch")


def test_demon_alfred_with_empty_question_type_is_open_ended_in_its_folder_category(data):
    result = load_benchmark("demon", os.path.join(data, "demon"))
    alfred = {s.id: s for s in result.samples}["ALFRED/3"]
    assert alfred.question_type == "open-ended" and alfred.extra["question_type_inferred"] is True
    assert alfred.category == "Multi-Modal Dialogue" and alfred.group == "ALFRED" and alfred.choices == []
    assert alfred.prompt.startswith("You are given a main goal") and alfred.prompt.count("<image>") == 3
    assert not any(item["id"].startswith("ALFRED/") for item in result.skipped)


def test_demon_choice_list_gets_the_official_prompt_suffix(data):
    by_id = {s.id: s for s in load_benchmark("demon", os.path.join(data, "demon")).samples}
    listed = by_id["MultiModalQA/0"]  # has a choice_list: instruction + context + the suffix of the official inference
    assert listed.prompt == (
        "Answer the question with the help of the table and the pictures. You must choose your answer from the Choice "
        "List. Global Table: <image> Context: <image> Question: Which sport does the team in the 1998 row play? "
        "Choice list:['soccer', 'baseball', 'basketball', 'football']. Your answer is:")
    assert listed.choices == ["soccer", "baseball", "basketball", "football"] and listed.reference == "baseball"
    written = by_id["MultiModalQA/1"]  # no choice_list: no suffix; the choices are read from the context for scoring
    assert written.prompt.endswith("Choice List:['red', 'blue', 'green', 'white'] Your answer is:")
    assert "Choice list:[" not in written.prompt and written.choices == ["red", "blue", "green", "white"]
    assert by_id["NLVR2/1"].prompt.endswith("Choice List:['True','False']Answer: ")
    assert by_id["NLVR2/0"].prompt.endswith("Answer: Choice list:['True', 'False']. Your answer is:")


def test_demon_task_names_and_categories_come_from_the_folders(data, tmp_path):
    by_id = {s.id: s for s in load_benchmark("demon", os.path.join(data, "demon")).samples}
    assert by_id["MultiModalQA/0"].group == "MultiModalQA"  # the metadata says "MMQA"
    assert by_id["MultiModalQA/0"].category == "Knowledge Grounded QA"
    record = {"sample_id": 7, "task_instruction_id": 0, "response": "a cat",
              "task_instance": {"context": "{image#1} What is shown?", "images_path": ["7.png"]}}
    folder = tmp_path / "Text-Rich Images QA" / "PosterQA" / "core"
    folder.mkdir(parents=True)
    (folder / "core.json").write_text(json.dumps({"metadata": {"dataset": "", "split": "core", "task_instruction": ["Answer. "],
                                                               "question_type": "open-ended"}, "data": [record]}))
    missing = reasons(load_benchmark("demon", str(tmp_path)))
    assert list(missing) == ["PosterQA/7"] and missing["PosterQA/7"].startswith("missing image")
    (folder / "7.png").write_bytes(open(by_id["NLVR2/0"].images[0], "rb").read())
    sample = load_benchmark("demon", str(tmp_path)).samples[0]
    assert (sample.id, sample.group, sample.category) == ("PosterQA/7", "PosterQA", "Text-Rich Images QA")
    assert task_identity("/data/VIST.json", {"dataset": "VIST"}) == ("VIST", "Visual Storytelling")  # outside the layout
    assert task_identity("/data/demon/DocVQA/core/core.json", {"dataset": "docvqa-x"}) == ("DocVQA", "Text-Rich Images QA")


def test_demon_choice_lists_with_unescaped_quotes_are_split_and_unreadable_ones_reported(data):
    comics = "{image#1}Choice List:['but suddenly - ', 'for pete ' s sake ! ', 'ow ! my foot ! ']Your answer is: "
    assert parse_choice_list(comics) == (["but suddenly - ", "for pete ' s sake ! ", "ow ! my foot ! "], None)
    assert parse_choice_list("""Choice List:['Image A: {image#4}', "it's B"] Your answer""") == (["Image A: {image#4}", "it's B"], None)
    assert parse_choice_list("no list here") == (None, None)
    assert parse_choice_list(["a", 2]) == (["a", "2"], None)
    choices, error = parse_choice_list("Choice List:[look out !, run !]Your answer is:")
    assert choices is None and error.startswith("unparsable choice list: expected quoted options")
    result = load_benchmark("demon", os.path.join(data, "demon"))
    sample = {s.id: s for s in result.samples}["COMICS_Dialogue/0"]
    assert len(sample.choices) == 4 and sample.choices[1] == "for pete ' s sake ! what ' s got into him ?"
    assert sample.reference in [c + " " for c in sample.choices] and sample.category == "Multi-Modal Cloze"
    assert reasons(result)["COMICS_Dialogue/1"].startswith("unparsable choice list")


def test_demon_answer_outside_its_choices_is_a_reported_skip(tmp_path):
    folder = tmp_path / "Multi-Image Reasoning" / "NLVR2" / "core"
    folder.mkdir(parents=True)
    record = {"sample_id": 0, "task_instruction_id": 0, "response": "Maybe",
              "task_instance": {"context": "Statement: x.", "images_path": [], "choice_list": ["True", "False"]}}
    (folder / "core.json").write_text(json.dumps({"metadata": {"dataset": "NLVR2", "task_instruction": ["Judge. "],
                                                               "question_type": "multi-choice"}, "data": [record]}))
    result = load_benchmark("demon", str(tmp_path))
    assert result.samples == [] and reasons(result)["NLVR2/0"].startswith("answer not among the choices: 'Maybe'")


def test_demon_fixtures_fill_every_category_they_name_and_count_every_skip(data):
    result = load_benchmark("demon", os.path.join(data, "demon"))
    assert all(s.category in CATEGORIES for s in result.samples)
    assert {s.category for s in result.samples} == {"Knowledge Grounded QA", "Multi-Image Reasoning", "Multi-Modal Cloze",
                                                    "Multi-Modal Dialogue", "Visual Relation Inference"}
    assert result.skip_counts() == {"image placeholder mismatch": 1, "unparsable choice list": 1}
    assert len(result.samples) + len(result.skipped) == 12  # every record of the 7 task files


def test_open_ended_questions_find_their_images_folder(data):
    result = load_benchmark("llava_bench", os.path.join(data, "llava_bench", "questions.jsonl"))
    assert [s.id for s in result.samples] == ["0", "1", "2"] and result.skipped == []
    assert result.samples[0].group == "detail" and result.samples[0].reference is None
    assert result.samples[0].prompt == "<image>\nDescribe the image in detail."


def test_every_sample_renders_through_the_processor(data):
    from modeling_vift.testing_utils import tiny_vift

    _, processor = tiny_vift()
    for name, path in [("mathvista", "mathvista_testmini.json"), ("mathverse", "mathverse_testmini.json"),
                       ("mathvision", "mathvision_test.jsonl"), ("demon", "demon")]:
        for sample in load_benchmark(name, os.path.join(data, path)).samples:
            images = [open_image(i) for i in sample.images]
            inputs = processor(images=images or None, text=[render_prompt(processor, sample)], return_tensors="pt")
            assert int((inputs["input_ids"] == processor.image_token_id).sum()) == len(images) * processor.image_seq_length


def test_filters_and_unreadable_data_paths(data, tmp_path):
    path = os.path.join(data, "mathvista_testmini.json")
    assert [s.id for s in load_benchmark("mathvista", path, exclude_ids=["1", "3"]).samples] == ["2", "4"]
    assert [s.id for s in load_benchmark("mathvista", path, max_samples=2).samples] == ["1", "2"]
    records = json.load(open(path))
    duplicate = tmp_path / "dup.json"
    duplicate.write_text(json.dumps([records["1"], records["1"]]))
    result = load_benchmark("mathvista", str(duplicate), image_root=data)
    assert len(result.samples) == 1 and reasons(result)["1"].startswith("duplicate id")
    with pytest.raises(DataError, match="does not exist"):
        load_benchmark("mathvista", str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="Unknown benchmark"):
        load_benchmark("mmlu", path)
