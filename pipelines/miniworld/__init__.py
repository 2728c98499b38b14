"""The mini video world: three small, deterministic, ffmpeg-encoded datasets in which the papers' claims are measurable.

Real datasets and pretrained weights cannot be downloaded on the project's machines and CI has 2 CPU cores
(ARCHITECTURE §5), so the project generates its own world of 64×64 videos of coloured shapes and pre-trains a small
CLIP on single frames of it (``image_text.npz``: static captions, no temporal words).

- ``mini-retrieval`` (CLIP4Clip, STAN, UCoFiA): captions whose meaning depends on order ("moves left, then up"),
  and reversal twins that no order-blind pooling can separate (`retrieval`).
- ``mini-wtal`` (DCC): untrimmed videos with video-level labels whose actions have still context, run-up and
  follow-through: incomplete vs over-complete localization (`wtal`).
- ``mini-grounding`` (LocVTP): sentence queries over moments of longer videos with several objects (`grounding`).

Sizes: ``tiny`` (tests, seconds), ``small`` (the mini reproductions), ``medium``. Entry point: `make_world`; the
layout of the output folder is described in `world`, the rules of each dataset in its module and, for every
generated dataset, in ``world.json["rules"]``. Same (name, seed, size) → identical annotations, frames and mp4 bytes.

Modules: `vocab` (the shared words), `render` (the one renderer), `encoding` (parallel, crash-safe encoding),
`plan` (builder output), `retrieval` / `wtal` / `grounding` (the builders), `image_text` (the image–caption set),
`world` (`make_world`).
"""

from __future__ import annotations

from pipelines.miniworld.plan import SIZES
from pipelines.miniworld.world import GENERATOR_VERSION, WORLDS, make_world

__all__ = ["GENERATOR_VERSION", "SIZES", "WORLDS", "make_world"]
