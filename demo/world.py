"""A small synthetic world for the ViFT demo: coloured shapes on a grid, their descriptions, and questions.

Every image is a `grid x grid` board of `cell`-pixel cells; a cell is empty or holds one shape with four
attributes (colour, shape, size, position = its cell). With the vision tower's patch size equal to `cell`, one
image token sees one cell. Everything is generated from a seed, so the same seed gives the same files.

What the data teach (the ViFT split of abilities):
- captions (stage 1: short; stage 2: detailed, with positions) teach *perception*: image -> words;
- text-only instructions teach *task solving* on a **textual** description of the scene: attribute questions,
  counting, comparison, yes/no, arithmetic on counts, answer-format instructions, and two-scene comparisons;
- visual instructions (the same questions asked about an *image*) are never trained on: they are the held-out
  evaluation, with a validation split for tuning fusion and a test split for reporting.
"""

import json
import os
import random
from dataclasses import asdict, dataclass


COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 80, 220), "yellow": (225, 195, 25)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POSITION_NAMES = {
    2: ("top left", "top right", "bottom left", "bottom right"),
    3: ("top left", "top middle", "top right", "middle left", "center", "middle right",
        "bottom left", "bottom middle", "bottom right"),
}
CHANGE_OPTIONS = ("colour", "shape", "size", "position", "number")

CAPTION_PROMPTS = (
    "Describe the image.",
    "Describe the image in detail.",
    "What is in this picture?",
    "Write a description of this image.",
)
ONE_WORD = "Answer with one word."
YES_NO = "Answer yes or no."
A_NUMBER = "Answer with a number."


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: int

    def phrase(self):
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple  # of Shape, sorted by cell (reading order)

    def count(self, **attrs):
        return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in self.objects)

    def unique(self, **attrs):
        found = [o for o in self.objects if all(getattr(o, k) == v for k, v in attrs.items())]
        return found[0] if len(found) == 1 else None


@dataclass
class WorldConfig:
    """Sizes of the synthetic world and of each data split (numbers of records)."""

    seed: int = 0
    grid: int = 2
    cell: int = 12
    min_objects: int = 1
    max_objects: int = 3
    vision_pretrain: int = 2000
    stage0_text: int = 6000
    stage1_captions: int = 3000
    stage2_captions: int = 3000
    stage2_text: int = 3000
    val_visual: int = 200
    test_visual: int = 400
    caption_eval: int = 100
    text_eval: int = 300
    demon_fraction: float = 0.2
    position_first: bool = True
    answer_opener: bool = True
    undescribed_fraction: float = 0.0

    def __post_init__(self):
        if self.grid not in POSITION_NAMES:
            raise ValueError(f"grid must be one of {sorted(POSITION_NAMES)}, got {self.grid}.")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects <= grid*grid ({self.grid * self.grid}); got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}."
            )

    @property
    def image_size(self):
        return self.grid * self.cell

    @property
    def fixed_count(self):
        """Every scene has the same number of shapes: questions whose answer would then be a constant (how many
        shapes, how many after adding some, which image has more) are not asked; a change never adds or removes one."""
        return self.min_objects == self.max_objects

    @property
    def positions(self):
        return POSITION_NAMES[self.grid]


# ----------------------------------------------------------------------------------------------- scenes


def random_scene(rng, config):
    n = rng.randint(config.min_objects, config.max_objects)
    cells = sorted(rng.sample(range(config.grid * config.grid), n))
    return Scene(tuple(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), c) for c in cells))


def change_options(config):
    """What can change between the two images of a change task (never the number of shapes when it is fixed)."""
    return tuple(k for k in CHANGE_OPTIONS if not (config.fixed_count and k == "number"))


def changed_scene(rng, scene, config):
    """A copy of `scene` with exactly one kind of change; returns (new scene, change kind)."""
    objects = list(scene.objects)
    free = [c for c in range(config.grid * config.grid) if c not in {o.cell for o in objects}]
    kinds = change_options(config)
    kind = rng.choice([k for k in kinds if free or k != "position"])  # a full board cannot move a shape
    if kind == "number" and (len(objects) == config.max_objects or (rng.random() < 0.5 and len(objects) > 1)):
        objects.pop(rng.randrange(len(objects)))
    elif kind == "number":
        objects.append(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), rng.choice(free)))
    else:
        i = rng.randrange(len(objects))
        old = objects[i]
        if kind == "colour":
            new = Shape(old.shape, rng.choice([c for c in COLOURS if c != old.colour]), old.size, old.cell)
        elif kind == "shape":
            new = Shape(rng.choice([s for s in SHAPES if s != old.shape]), old.colour, old.size, old.cell)
        elif kind == "size":
            new = Shape(old.shape, old.colour, "large" if old.size == "small" else "small", old.cell)
        else:
            new = Shape(old.shape, old.colour, old.size, rng.choice(free))
        objects[i] = new
    return Scene(tuple(sorted(objects, key=lambda o: o.cell))), kind


def render(scene, config, rng):
    """The scene as an RGB PIL image (white board, one shape per occupied cell, small jitter)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (config.image_size, config.image_size), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        row, col = divmod(o.cell, config.grid)
        extent = config.cell - 2 if o.size == "large" else config.cell // 2
        slack = config.cell - extent
        x0 = col * config.cell + rng.randint(max(0, slack // 2 - 1), min(slack, slack // 2 + 1))
        y0 = row * config.cell + rng.randint(max(0, slack // 2 - 1), min(slack, slack // 2 + 1))
        x1, y1 = x0 + extent - 1, y0 + extent - 1
        colour = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[o.colour])
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=colour)
    return image


# ----------------------------------------------------------------------------------------------- text


def number_word(n):
    return NUMBER_WORDS[n]


def plural(shape, n=2):
    return shape if n == 1 else shape + "s"


def join_phrases(phrases):
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def short_caption(scene, config):
    """Stage-1 caption: the shapes only, no positions (like a terse web caption)."""
    return "The image shows " + join_phrases([o.phrase() for o in scene.objects]) + "."


def object_phrase(o, config):
    """One object with its position: "in the top left a small red circle" (`position_first`, the default: a reader
    names the cell first, then what is in it) or "a small red circle at the top left"."""
    where = config.positions[o.cell]
    return f"in the {where} {o.phrase()}" if config.position_first else f"{o.phrase()} at the {where}"


def detailed_caption(scene, config, subject="The image"):
    """Stage-2 caption, and the textual form of a scene in text-only instructions (`subject` names the image)."""
    n = len(scene.objects)
    head = f"{subject} shows {number_word(n)} {plural('shape', n)}: "
    return head + join_phrases([object_phrase(o, config) for o in scene.objects]) + "."


def scene_descriptions(scenes, config):
    """One detailed description per image: "The image shows ..." for one, "Image 1 shows ..." for several."""
    if len(scenes) == 1:
        return [detailed_caption(scenes[0], config)]
    return [detailed_caption(s, config, f"Image {i + 1}") for i, s in enumerate(scenes)]


ANSWER_LEAD = "So the answer is"


ANSWER_OPENER = "Let me describe it first."


def reasoned_answer(descriptions, answer, opener=True):
    """The answers of the text-only instructions: first what the image(s) show, then the answer. With `opener`
    they start with `ANSWER_OPENER`: an instruction answer has its own style from the first word on (as an instruct
    LLM's answers do), unlike a caption, so the first generated token already says which of the two a response is."""
    text = " ".join(descriptions) + f" {ANSWER_LEAD} {answer}."
    return f"{ANSWER_OPENER} {text}" if opener else text


def final_answer(text):
    """The answer a response states after "So the answer is" (empty when it states none, e.g. a bare caption)."""
    at = text.rfind(ANSWER_LEAD)
    if at < 0:
        return ""
    return text[at + len(ANSWER_LEAD):].strip().rstrip(".").strip()


def parse_caption(text, config):
    """The set of (size, colour, shape, position) a caption states, for scoring generated captions."""
    words = text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()
    found = set()
    positions = sorted(config.positions, key=len, reverse=True)
    for i in range(len(words) - 2):
        if words[i] in SIZES and words[i + 1] in COLOURS and words[i + 2] in SHAPES:
            if config.position_first:
                before = " ".join(words[max(0, i - 5):i - 1])  # "in the <position> a <size> ..."
                position = next((p for p in positions if before.endswith("in the " + p)), None)
            else:
                after = " ".join(words[i + 3:i + 7])
                position = next((p for p in positions if after.startswith("at the " + p)), None)
            found.add((words[i], words[i + 1], words[i + 2], position))
    return found


def scene_facts(scene, config):
    return {(o.size, o.colour, o.shape, config.positions[o.cell]) for o in scene.objects}


CELL_ATTRIBUTES = {"colour": ("none",) + tuple(COLOURS), "shape": ("none",) + SHAPES, "size": ("none",) + SIZES}


def cell_labels(scene, config):
    """Per cell, the index of its colour, shape and size in `CELL_ATTRIBUTES` (0 = empty cell)."""
    labels = [[0, 0, 0] for _ in range(config.grid * config.grid)]
    for o in scene.objects:
        labels[o.cell] = [CELL_ATTRIBUTES["colour"].index(o.colour), CELL_ATTRIBUTES["shape"].index(o.shape),
                          CELL_ATTRIBUTES["size"].index(o.size)]
    return labels


# ----------------------------------------------------------------------------------------------- questions


def single_question(rng, scene, config):
    """One question about one scene: (kind, question text, answer, choices or None)."""
    objects = scene.objects
    makers = [_ask_colour, _ask_shape, _ask_size, _ask_position, _ask_exists]
    if not config.fixed_count:  # with a fixed number of shapes these are answered well from the priors alone
        makers += [_ask_count, _ask_count_attr, _ask_compare, _ask_total, _ask_add]
    while True:
        made = rng.choice(makers)(rng, scene, objects, config)
        if made is not None:
            return made


def _ask_colour(rng, scene, objects, config):
    o = rng.choice(objects)
    if scene.unique(shape=o.shape) is None:
        return None
    return "attribute", f"What colour is the {o.shape}? {ONE_WORD}", o.colour, None


def _ask_shape(rng, scene, objects, config):
    o = rng.choice(objects)
    if scene.unique(colour=o.colour) is None:
        return None
    return "attribute", f"What shape is the {o.colour} object? {ONE_WORD}", o.shape, None


def _ask_size(rng, scene, objects, config):
    o = rng.choice(objects)
    if scene.unique(colour=o.colour, shape=o.shape) is None:
        return None
    return "attribute", f"Is the {o.colour} {o.shape} small or large? {ONE_WORD}", o.size, None


def _ask_position(rng, scene, objects, config):
    o = rng.choice(objects)
    if scene.unique(colour=o.colour, shape=o.shape) is None:
        return None
    return "attribute", f"Where is the {o.colour} {o.shape}? Answer with its position.", config.positions[o.cell], None


def _ask_count(rng, scene, objects, config):
    n = len(objects)
    if rng.random() < 0.5:
        return "counting", f"How many shapes are there? {ONE_WORD}", number_word(n), None
    return "counting", f"How many shapes are in the image? {A_NUMBER}", str(n), None


def _ask_count_attr(rng, scene, objects, config):
    if rng.random() < 0.5:
        colour = rng.choice(list(COLOURS))
        n = scene.count(colour=colour)
        return "counting", f"How many {colour} shapes are there? {A_NUMBER}", str(n), None
    shape = rng.choice(SHAPES)
    n = scene.count(shape=shape)
    return "counting", f"How many {plural(shape)} are there? {A_NUMBER}", str(n), None


def _ask_exists(rng, scene, objects, config):
    """Balanced yes/no: half the time about an attribute a shape of the scene has, else one no shape has (so the
    answer cannot be guessed from how often "no" is right)."""
    by_shape = rng.random() < 0.5
    present = {o.shape for o in objects} if by_shape else {o.colour for o in objects}
    options = SHAPES if by_shape else tuple(COLOURS)
    absent = [v for v in options if v not in present]
    value = rng.choice(sorted(present)) if rng.random() < 0.5 or not absent else rng.choice(absent)
    answer = "yes" if value in present else "no"
    question = f"Is there a {value}? {YES_NO}" if by_shape else f"Is there a {value} shape? {YES_NO}"
    return "yes/no", question, answer, None


def _ask_compare(rng, scene, objects, config):
    a, b = rng.sample(SHAPES, 2)
    na, nb = scene.count(shape=a), scene.count(shape=b)
    if na == nb:
        return None
    answer = "yes" if na > nb else "no"
    return "comparison", f"Are there more {plural(a)} than {plural(b)}? {YES_NO}", answer, None


def _ask_total(rng, scene, objects, config):
    a, b = rng.sample(SHAPES, 2)
    n = scene.count(shape=a) + scene.count(shape=b)
    return "arithmetic", f"How many {plural(a)} and {plural(b)} are there in total? {A_NUMBER}", str(n), None


def _ask_add(rng, scene, objects, config):
    k = rng.randint(1, 3)
    n = len(objects) + k
    return "arithmetic", f"If {number_word(k)} more {plural('shape', k)} are added, how many shapes will there be? {A_NUMBER}", str(n), None


def pair_question(rng, config):
    """A DEMON-style two-image task: (scene 1, scene 2, kind, question, answer, choices)."""
    first = random_scene(rng, config)
    if not config.fixed_count and rng.random() < 0.5:
        second = random_scene(rng, config)
        while len(second.objects) == len(first.objects):
            second = random_scene(rng, config)
        answer = "first" if len(first.objects) > len(second.objects) else "second"
        question = "Which of the two images has more shapes? Answer first or second."
        return first, second, "two images", question, answer, ("first", "second")
    second, kind = changed_scene(rng, first, config)
    options = change_options(config)
    question = f"What changed from image 1 to image 2? Choose one of: {', '.join(options)}."
    return first, second, "two images", question, kind, options


# ----------------------------------------------------------------------------------------------- prompts


def visual_messages(question, n_images=1):
    """A visual instruction as chat messages (`{"type": "image"}` items render as `<image>` + newline)."""
    if n_images == 1:
        content = [{"type": "image"}, {"type": "text", "text": question}]
    else:
        content = []
        for i in range(n_images):
            content += [{"type": "text", "text": f"Image {i + 1}: "}, {"type": "image"}]
        content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def textual_prompt(descriptions, question):
    """The text-only form of an instruction: each image replaced by its description."""
    return "".join(f"{d}\n" for d in descriptions) + question


# ----------------------------------------------------------------------------------------------- files


class ImageWriter:
    """Renders scenes into `root/images/<split>_<n>.png`; `image` returns the path relative to `root`."""

    def __init__(self, root, config):
        self.root, self.config = root, config
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        self.count = 0

    def image(self, scene, rng, split):
        name = f"images/{split}_{self.count:05d}.png"
        self.count += 1
        render(scene, self.config, rng).save(os.path.join(self.root, name))
        return name


def _instance(rng, config):
    """One task instance: (scenes, kind, question, answer, choices); DEMON-style two-image tasks now and then."""
    if rng.random() < config.demon_fraction:
        first, second, kind, question, answer, choices = pair_question(rng, config)
        return [first, second], kind, question, answer, choices
    scene = random_scene(rng, config)
    kind, question, answer, choices = single_question(rng, scene, config)
    return [scene], kind, question, answer, choices


def _text_record(rng, config, i, prefix):
    """A text-only instruction: the scene(s) as text, the question; the answer restates the scene(s), then answers."""
    scenes, kind, question, answer, _ = _instance(rng, config)
    descriptions = scene_descriptions(scenes, config)
    # A share of the questions come without their scene description (as users ask an LLM about things it was not
    # shown); the answer still describes the scene, then answers: the LM learns that a question gets a described
    # answer, whether or not the description is in the prompt.
    shown = descriptions if rng.random() >= config.undescribed_fraction else []
    return {"id": f"{prefix}-{i}", "kind": kind, "answer": answer, "conversations": [
        {"from": "human", "value": textual_prompt(shown, question)},
        {"from": "gpt", "value": reasoned_answer(descriptions, answer, config.answer_opener)}]}


def build_world(root, config=None):
    """Writes every split of the world under `root` (LLaVA/Bunny conversation JSON + PNG images) and returns
    a dict of split name -> file path. Deterministic: the same config gives the same files."""
    config = config or WorldConfig()
    rng = random.Random(config.seed)
    os.makedirs(root, exist_ok=True)
    writer = ImageWriter(root, config)
    paths = {}

    def dump(name, records):
        path = os.path.join(root, f"{name}.json")
        with open(path, "w") as f:
            json.dump(records, f)
        paths[name] = path

    # Stage 0 and stage 2 text-only instructions (textual scene descriptions; separate scenes).
    dump("stage0_text", [_text_record(rng, config, i, "s0") for i in range(config.stage0_text)])
    dump("stage2_text", [_text_record(rng, config, i, "s2t") for i in range(config.stage2_text)])

    # Stand-in for the vision tower's pretraining: images with the attributes of every cell.
    records = []
    for i in range(config.vision_pretrain):
        scene = random_scene(rng, config)
        records.append({"id": f"vp-{i}", "image": writer.image(scene, rng, "vp"), "cells": cell_labels(scene, config)})
    dump("vision_pretrain", records)

    # Stage 1: short captions, "plain" template (image then caption, no instruction).
    records = []
    for i in range(config.stage1_captions):
        scene = random_scene(rng, config)
        records.append({"id": f"s1-{i}", "image": writer.image(scene, rng, "s1"), "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": short_caption(scene, config)}]})
    dump("stage1_captions", records)

    # Stage 2: detailed captions in the chat template.
    records = []
    for i in range(config.stage2_captions):
        scene = random_scene(rng, config)
        prompt = rng.choice(CAPTION_PROMPTS)
        records.append({"id": f"s2c-{i}", "image": writer.image(scene, rng, "s2"), "conversations": [
            {"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": detailed_caption(scene, config)}]})
    dump("stage2_captions", records)

    # Held-out evaluation: visual instructions (never trained), captions, text-only QA.
    for split, n in (("val", config.val_visual), ("test", config.test_visual)):
        records = []
        for i in range(n):
            scenes, kind, question, answer, choices = _instance(rng, config)
            records.append({
                "id": f"{split}-{i}", "kind": kind, "question": question, "answer": answer,
                "choices": list(choices) if choices else None,
                "images": [writer.image(s, rng, split) for s in scenes],
                "descriptions": scene_descriptions(scenes, config),
            })
        dump(f"{split}_visual", records)

    records = []
    for i in range(config.caption_eval):
        scene = random_scene(rng, config)
        records.append({"id": f"cap-{i}", "image": writer.image(scene, rng, "cap"),
                        "caption": detailed_caption(scene, config),
                        "facts": sorted(list(f) for f in scene_facts(scene, config))})
    dump("caption_eval", records)
    dump("text_eval", [_text_record(rng, config, i, "tq") for i in range(config.text_eval)])

    with open(os.path.join(root, "world_config.json"), "w") as f:
        json.dump(asdict(config), f, indent=1)
    return paths


def corpus(paths):
    """Every training text of the world (for the tokenizer)."""
    texts = list(CAPTION_PROMPTS)
    for name in ("stage0_text", "stage1_captions", "stage2_captions", "stage2_text"):
        with open(paths[name]) as f:
            for record in json.load(f):
                texts += [turn["value"].replace("<image>", "") for turn in record["conversations"]]
    return texts
