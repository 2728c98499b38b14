"""Training recipes: one method on one kind of dataset, composed from `models/` (the network) and `pipelines/`
(the data). Each module exposes ``build(config: dict) -> Recipe`` (see `models.engine.loop.Recipe`); the Ray wrapper
imports it by the dotted path in `RECIPES`, so workers rebuild recipes from plain JSON-able configs.
"""

from __future__ import annotations

RECIPES: dict[str, str] = {
    "miniclip": "recipes.miniclip:build",
    "clip4clip": "recipes.clip4clip:build",
    "stan": "recipes.stan:build",
    "ucofia": "recipes.ucofia:build",
    "dcc": "recipes.dcc:build",
    "locvtp": "recipes.locvtp:build",
    "grounding": "recipes.grounding:build",
}
