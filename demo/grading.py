"""Grading the demo's answers: scoring, prompts and batched generation for the demo's evaluation.

A response is scored on the answer it states after "So the answer is" (the format the text-only instructions teach);
a response that states none (e.g. a bare caption) is wrong. The stated answer must match exactly after normalisation
(lower case, punctuation dropped, spaces collapsed); for the DEMON-style multiple-choice tasks it is first mapped to
the closest option (TF-IDF cosine over the options, the DEMON protocol).
"""

import math
import re
from collections import Counter, defaultdict

import torch
from tqdm.auto import tqdm

from modeling_vift.evaluation.runner import generate_greedy

from .world import final_answer, parse_caption, textual_prompt, visual_messages


_PUNCT = re.compile(r"[^\w\s]")

progress_stream = None  # where generation progress bars go (the demo points it at the console; None: stderr)


def normalize(text):
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def closest_choice(prediction, choices):
    """The option with the highest TF-IDF cosine similarity to `prediction`, or None when no word is shared."""
    options = [normalize(c).split() for c in choices]
    words = normalize(prediction).split()
    if not words:
        return None
    df = Counter(w for option in options for w in set(option))
    idf = {w: math.log((1 + len(options)) / (1 + n)) + 1 for w, n in df.items()}

    def vector(tokens):
        counts = Counter(t for t in tokens if t in idf)
        return {t: c * idf[t] for t, c in counts.items()}

    pred = vector(words)
    best, best_score = None, 0.0
    for choice, option in zip(choices, options):
        vec = vector(option)
        dot = sum(pred.get(t, 0.0) * v for t, v in vec.items())
        norm = math.sqrt(sum(v * v for v in pred.values())) * math.sqrt(sum(v * v for v in vec.values()))
        score = dot / norm if norm else 0.0
        if score > best_score:
            best, best_score = choice, score
    return best


def is_correct(response, record):
    answer = final_answer(response)
    if not answer:
        return False
    if record.get("choices"):
        return closest_choice(answer, record["choices"]) == record["answer"]
    return normalize(answer) == normalize(record["answer"])


def accuracy(responses, records):
    """Overall accuracy, accuracy per task kind, and the share of responses that state an answer at all."""
    if len(responses) != len(records):
        raise ValueError(f"{len(responses)} responses for {len(records)} records.")
    if not records:
        raise ValueError("Cannot compute an accuracy over zero records.")
    by_kind = defaultdict(list)
    for response, record in zip(responses, records):
        by_kind[record["kind"]].append(is_correct(response, record))
    total = sum(sum(v) for v in by_kind.values())
    return {
        "accuracy": total / len(records),
        "correct": total,
        "count": len(records),
        "states_an_answer": sum(bool(final_answer(r)) for r in responses) / len(responses),
        "by_kind": {kind: sum(v) / len(v) for kind, v in sorted(by_kind.items())},
    }


def caption_scores(predictions, records, world_config):
    """Perception: a caption is exact when the set of (size, colour, shape, position) it states equals the scene's;
    precision / recall count single objects with all four attributes right."""
    exact = true_positives = predicted = expected = 0
    for prediction, record in zip(predictions, records):
        found = parse_caption(prediction, world_config)
        facts = {tuple(f) for f in record["facts"]}
        exact += found == facts
        true_positives += len(found & facts)
        predicted += len(found)
        expected += len(facts)
    return {
        "exact": exact / len(records),
        "object_precision": true_positives / predicted if predicted else 0.0,
        "object_recall": true_positives / expected if expected else 0.0,
        "count": len(records),
    }


# ----------------------------------------------------------------------------------------------- prompts


def render(processor, messages):
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def visual_prompt(processor, record):
    return render(processor, visual_messages(record["question"], len(record["images"])))


def textual_record_prompt(processor, record):
    """The same instruction with each image replaced by its true description (task solving on text)."""
    return render(processor, [{"role": "user", "content": textual_prompt(record["descriptions"], record["question"])}])


def conversation_prompt(processor, record):
    """The user turn of a LLaVA/Bunny text-only record, rendered for generation."""
    return render(processor, [{"role": "user", "content": record["conversations"][0]["value"]}])


# ----------------------------------------------------------------------------------------------- generation


def generate(model, processor, prompts, images=None, fusion=None, batch_size=64, max_new_tokens=8, desc=None):
    """Greedy answers for `prompts` (rendered strings), in batches of `batch_size`; `images[i]` is the list of PIL
    images of prompt i.

    `fusion=None` is plain generation; `fusion=(alpha, beta, (start, end))` is ViFT's fused generation with the
    text-only prompt q returned by the processor (`return_text_only=True`: the same chat prompt, images removed)."""
    fusion_kwargs = None
    if fusion is not None:
        alpha, beta, layers, *alignment = fusion
        fusion_kwargs = dict(fusion=True, fusion_alpha=alpha, fusion_beta=beta, fusion_layers=tuple(layers))
        if alignment:
            fusion_kwargs["fusion_alignment"] = alignment[0]
    answers = []
    bar = tqdm(total=len(prompts), desc=desc, leave=False, disable=desc is None, ncols=90, file=progress_stream)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        batch_images = [im for row in images[start:start + batch_size] for im in row] if images else None
        answers += generate_greedy(model, processor, batch, batch_images, max_new_tokens, fusion=fusion_kwargs,
                                   eos_token_id=processor.tokenizer.eos_token_id)
        bar.update(len(batch))
    bar.close()
    return answers


@torch.no_grad()
def generate_text(model, tokenizer, prompts, batch_size=64, max_new_tokens=8, desc=None):
    """Greedy answers of a text-only causal LM to rendered prompts."""
    answers = []
    bar = tqdm(total=len(prompts), desc=desc, leave=False, disable=desc is None, ncols=90, file=progress_stream)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        bar.update(len(batch))
    bar.close()
    return [a.strip() for a in answers]
