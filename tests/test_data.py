import json
import os

import pytest

from modeling_vift.testing_utils import random_images, tiny_vift
from modeling_vift.training.data import (
    DataSource,
    MixtureConfig,
    SampleError,
    SampleTokenizer,
    SourceConfig,
    build_training_data,
    conversations_to_messages,
)


def llava(record_id, *turns, image=None):
    record = {"id": record_id, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture(scope="module")
def processor():
    return tiny_vift()[1]


def write_images(folder, count):
    os.makedirs(folder, exist_ok=True)
    names = []
    for i, image in enumerate(random_images(count)):
        names.append(f"{i}.png")
        image.save(os.path.join(folder, names[-1]))
    return names


def write_json(path, records):
    with open(path, "w") as f:
        json.dump(records, f)
    return str(path)


def test_conversations_to_messages_converts_llava_records_to_trl_messages():
    record = llava(
        "a", ("system", "be brief."), ("human", "<image>\nwhat is this?"), ("gpt", "a circle."),
        ("human", "and the colour?"), ("gpt", "red."), image="x.jpg",
    )
    assert conversations_to_messages(record) == [
        {"role": "system", "content": [{"type": "text", "text": "be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a circle."}]},
        {"role": "user", "content": [{"type": "text", "text": "and the colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red."}]},
    ]
    # A caption record: the user turn is the image alone.
    caption = conversations_to_messages(llava("c", ("human", "<image>\n"), ("gpt", "two stars."), image="y.jpg"))
    assert caption[0] == {"role": "user", "content": [{"type": "image"}]}
    text_only = conversations_to_messages(llava("t", ("human", "hi"), ("gpt", "hello")))
    assert [m["role"] for m in text_only] == ["user", "assistant"]


@pytest.mark.parametrize(
    "record, reason, words",
    [
        (llava("r1", ("robot", "hi"), ("gpt", "hello")), "unknown_role", "robot"),
        (llava("r2", ("human", "hi"), ("gpt", "hello"), ("human", "bye")), "ends_on_user", "ends on a user turn"),
        (llava("r3", ("human", "<image>\nwhat?"), ("gpt", "x")), "placeholder_without_image", "1 image placeholder"),
        (llava("r4", ("human", "what?"), ("gpt", "x"), image="a.jpg"), "image_without_placeholder", "1 image(s)"),
        (llava("r5", ("human", "hi"), ("gpt", "   ")), "empty_text", "no text"),
        (llava("r6", ("human", ""), ("gpt", "x")), "empty_text", "no text"),
        ({"id": "r7", "conversations": []}, "no_conversations", "conversations"),
    ],
)
def test_bad_conversations_raise_clear_errors(record, reason, words):
    with pytest.raises(SampleError) as error:
        conversations_to_messages(record)
    assert error.value.reason == reason
    assert words in str(error.value) and record["id"] in str(error.value)


def test_chat_labels_cover_exactly_the_assistant_turns(processor):
    tokenizer = processor.tokenizer
    messages = conversations_to_messages(
        llava("a", ("human", "<image>\nhow many shapes?"), ("gpt", "two"), ("human", "which colour?"), ("gpt", "red"),
              image="x.png")
    )
    out = SampleTokenizer(processor, template="chat")(messages, 1)
    assert out["input_ids"].count(processor.image_token_id) == 1
    assert out["length"] == len(out["input_ids"]) - 1 + processor.image_seq_length
    trained = tokenizer.decode([t for t, l in zip(out["input_ids"], out["labels"]) if l != -100])
    assert trained == "two<|im_end|>\nred<|im_end|>\n"
    # Everything trained is the token itself (labels are not shifted here; the model shifts).
    assert all(l in (-100, t) for t, l in zip(out["input_ids"], out["labels"]))


def test_plain_template_is_image_then_caption_with_loss_on_the_caption_only(processor):
    messages = conversations_to_messages(llava("c", ("human", "<image>\ndescribe."), ("gpt", "a red circle"), image="x"))
    out = SampleTokenizer(processor, template="plain")(messages, 1)
    assert out["input_ids"][0] == processor.image_token_id and out["labels"][0] == -100
    assert processor.tokenizer.decode(out["input_ids"][1:]) == "a red circle\n"
    assert out["labels"][1:] == out["input_ids"][1:]
    with pytest.raises(SampleError, match="one caption per record"):
        two = conversations_to_messages(llava("m", ("human", "<image>\n"), ("gpt", "a"), ("human", "b"), ("gpt", "c"),
                                              image="x"))
        SampleTokenizer(processor, template="plain")(two, 1)


def test_overlong_samples_never_lose_image_tokens(processor):
    seq = processor.image_seq_length
    long_caption = " ".join(["red circle"] * 60)
    with_image = conversations_to_messages(llava("i", ("human", "<image>\n"), ("gpt", long_caption), image="x"))
    # Image fits, text does not: the text is cut, the image tokens stay whole.
    cut = SampleTokenizer(processor, template="plain", max_length=seq + 10)(with_image, 1)
    assert cut["truncated"] and cut["length"] == seq + 10 and cut["input_ids"].count(processor.image_token_id) == 1
    # The image itself does not fit: dropped with a reason, never cut.
    with pytest.raises(SampleError) as error:
        SampleTokenizer(processor, template="chat", max_length=seq)(with_image, 1)
    assert error.value.reason == "too_long_image" and "cut through an image" in str(error.value)
    text_only = conversations_to_messages(llava("t", ("human", "count"), ("gpt", long_caption)))
    with pytest.raises(SampleError) as error:
        SampleTokenizer(processor, template="chat", max_length=40, overlong="drop")(text_only, 0)
    assert error.value.reason == "too_long"
    # A prompt longer than max_length leaves nothing to train on: dropped, not trained on zero tokens.
    long_prompt = conversations_to_messages(llava("p", ("human", long_caption), ("gpt", "ok")))
    with pytest.raises(SampleError) as error:
        SampleTokenizer(processor, template="chat", max_length=40)(long_prompt, 0)
    assert error.value.reason == "no_loss_tokens"


def test_bad_records_are_skipped_and_counted_per_reason_or_fail_in_strict_mode(tmp_path, processor):
    names = write_images(tmp_path / "images", 2)
    records = [
        llava("ok-image", ("human", "<image>\n"), ("gpt", "a red circle"), image=names[0]),
        llava("ok-text", ("human", "count"), ("gpt", "one two")),
        llava("role", ("bot", "hi"), ("gpt", "x")),
        llava("user-last", ("human", "hi"), ("gpt", "x"), ("human", "and?")),
        llava("no-image", ("human", "<image>\nwhat?"), ("gpt", "x")),
        llava("no-placeholder", ("human", "what?"), ("gpt", "x"), image=names[1]),
        llava("empty", ("human", "hi"), ("gpt", "")),
        llava("missing-file", ("human", "<image>\n"), ("gpt", "x"), image="nowhere.png"),
        llava("too-long", ("human", "count one two three four five six seven " * 3 + "<image>"), ("gpt", "x"),
              image=names[1]),
    ]
    path = write_json(tmp_path / "data.json", records)
    mixture = {"sources": [{"name": "mixed", "path": path, "image_folder": str(tmp_path / "images")}]}
    max_length = processor.image_seq_length + 40
    data = build_training_data(mixture, processor, max_length=max_length, template="chat")
    assert len(data) == 2, data.report.format()
    assert dict(data.report.skipped) == {
        "mixed/unknown_role": 1, "mixed/ends_on_user": 1, "mixed/placeholder_without_image": 1,
        "mixed/image_without_placeholder": 1, "mixed/empty_text": 1, "mixed/missing_image": 1,
        "mixed/too_long_image": 1,
    }
    text = data.report.format()
    assert "7 sample(s) skipped" in text and "missing_image" in text and "of 9" in text
    with pytest.raises(SampleError, match="mixed.*robot|mixed.*'bot'"):
        build_training_data(mixture, processor, max_length=max_length, strict=True)


def test_reads_trl_conversational_datasets_with_embedded_images(tmp_path, processor):
    from datasets import Dataset

    images = random_images(2)
    rows = {
        "id": ["a", "b", "c"],
        "source": ["captions", "text", "captions"],
        "messages": [
            conversations_to_messages(llava("a", ("human", "<image>\n"), ("gpt", "a red circle"), image="x")),
            conversations_to_messages(llava("b", ("human", "count"), ("gpt", "one two"))),
            conversations_to_messages(llava("c", ("human", "<image>\nwhat?"), ("gpt", "two stars"), image="y")),
        ],
        "images": [[images[0]], [], [images[1]]],
    }
    dataset = Dataset.from_dict(rows)
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for path in (str(tmp_path / "train.parquet"), str(tmp_path / "saved")):
        source = DataSource(SourceConfig(name="hub", path=path))
        assert source.format == "messages"
        loaded = source.load_images(2)
        assert len(loaded) == 1 and loaded[0].tobytes() == images[1].tobytes()
        data = build_training_data({"sources": [{"name": "hub", "path": path}]}, processor, max_length=256)
        assert len(data) == 3 and sorted(data.num_images.tolist()) == [0, 1, 1]


def test_mixture_takes_fractions_or_weights_and_shuffles_with_its_seed(tmp_path, processor):
    a = write_json(tmp_path / "a.json", [llava(f"a{i}", ("human", "count"), ("gpt", "one")) for i in range(10)])
    b = write_json(tmp_path / "b.json", [llava(f"b{i}", ("human", "count"), ("gpt", "two")) for i in range(4)])

    def counts(data):
        return [int((data.source_ids == i).sum()) for i in range(2)]

    fractions = {"seed": 1, "sources": [{"name": "a", "path": a, "fraction": 0.5}, {"name": "b", "path": b, "fraction": 2}]}
    data = build_training_data(fractions, processor, max_length=64)
    assert counts(data) == [5, 8]  # half of a; b twice over
    assert sorted(data.rows[data.source_ids == 1].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    weights = {"seed": 1, "num_samples": 12, "sources": [{"name": "a", "path": a, "weight": 3}, {"name": "b", "path": b, "weight": 1}]}
    assert counts(build_training_data(weights, processor, max_length=64)) == [9, 3]
    again = build_training_data(fractions, processor, max_length=64)
    other = build_training_data({**fractions, "seed": 2}, processor, max_length=64)
    assert again.rows.tolist() == data.rows.tolist() and again.source_ids.tolist() == data.source_ids.tolist()
    assert (other.rows.tolist(), other.source_ids.tolist()) != (data.rows.tolist(), data.source_ids.tolist())

    yaml_path = tmp_path / "mixture.yaml"
    yaml_path.write_text("seed: 3\nsources:\n  - {name: a, path: a.json, fraction: 0.2}\n")
    mixture = MixtureConfig.from_value(str(yaml_path))
    assert mixture.sources[0].path == a and mixture.seed == 3  # relative paths resolve next to the YAML


@pytest.mark.parametrize(
    "mixture, message",
    [
        ({"sources": [{"name": "a", "path": "a.json", "fraction": 0.5, "weight": 1}]}, "not both"),
        ({"sources": [{"name": "a", "path": "a.json", "weight": 1}]}, "needs `num_samples`"),
        ({"sources": [{"name": "a", "path": "a.json", "weight": 1}, {"name": "b", "path": "b.json"}],
          "num_samples": 4}, "Either every mixture source"),
        ({"sources": [{"name": "a", "path": "a.json", "fractoin": 0.5}]}, "unknown key"),
        ({"sources": []}, "non-empty `sources`"),
        ({"sources": [{"name": "a", "path": "a.json"}, {"name": "a", "path": "b.json"}]}, "unique"),
    ],
)
def test_malformed_mixtures_are_clear_errors(mixture, message):
    with pytest.raises(ValueError, match=message):
        MixtureConfig.from_value(mixture)


def test_unknown_dataset_layout_is_a_clear_error(tmp_path):
    path = write_json(tmp_path / "d.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match="expected the authors' LLaVA/Bunny format"):
        DataSource(SourceConfig(name="odd", path=path))


def test_parallel_tokenisation_matches_serial_and_reports_errors_from_worker_processes(tmp_path, processor):
    records = [llava(f"t{i}", ("human", "count " * (i % 5 + 1)), ("gpt", "one two " * (i % 3 + 1))) for i in range(40)]
    records[17] = llava("bad", ("human", "hi"), ("gpt", "x"), ("human", "and?"))
    path = write_json(tmp_path / "d.json", records)
    mixture = {"sources": [{"name": "d", "path": path}]}
    serial = build_training_data(mixture, processor, max_length=64)
    parallel = build_training_data(mixture, processor, max_length=63, num_proc=2)  # another max_length: no cache hit
    assert len(serial) == len(parallel) == 39
    assert dict(parallel.report.skipped) == {"d/ends_on_user": 1}
    assert [serial.tokenized[0][int(r)]["input_ids"] for r in serial.rows[:5]] == \
        [parallel.tokenized[0][int(r)]["input_ids"] for r in parallel.rows[:5]]
    with pytest.raises(SampleError, match="'bad'.*ends on a user turn"):
        build_training_data(mixture, processor, max_length=62, num_proc=2, strict=True)
