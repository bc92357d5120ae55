"""Helpers of the evaluation tests: the fixtures of tests/fixtures/eval with their images, and a tiny saved model."""

import os

from modeling_vift import testing_utils as fixtures


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "eval")
DATA_FILES = dict(fixtures.FIXTURE_FILES, llava_bench=fixtures.FIXTURE_FILES["open_ended"])


def materialize_fixtures(target):
    return fixtures.materialize_fixtures(FIXTURES, target)


def save_tiny_model(target):
    return fixtures.save_tiny_model(target)
