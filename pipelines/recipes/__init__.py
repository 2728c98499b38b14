"""Training recipes: one method on one kind of dataset, composed from `models/` (the network) and `pipelines/`
(the data). Each module exposes ``build(config: dict) -> Recipe`` (see `models.engine.loop.Recipe`); the Ray wrapper
imports it by the dotted path in `RECIPES`, so workers rebuild recipes from plain JSON-able configs.
"""

from __future__ import annotations

RECIPES: dict[str, str] = {
    "miniclip": "pipelines.recipes.miniclip:build",
    "clip4clip": "pipelines.recipes.clip4clip:build",
    "stan": "pipelines.recipes.stan:build",
    "ucofia": "pipelines.recipes.ucofia:build",
    "dcc": "pipelines.recipes.dcc:build",
    "locvtp": "pipelines.recipes.locvtp:build",
    "grounding": "pipelines.recipes.grounding:build",
}
