"""Every post-training recipe parses into a RunConfig plus a PostTrainConfig."""

from pathlib import Path

import pytest

from slm.posttrain.config import load_posttrain_config

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("posttrain-*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_posttrain_recipe_parses(recipe):
    cfg, post = load_posttrain_config(recipe)
    assert cfg.train.total_steps() > 0
    assert post.init_from or post.generate.teacher


def test_there_are_posttrain_recipes():
    assert any(p.name == "posttrain-demo.yaml" for p in RECIPES)
