"""Synthetic data for the demo, tests and benchmarks: every generator is seeded and writes the same bytes each run.

- `slides`: pyramidal, tiled, JPEG-compressed TIFF slides that OpenSlide opens (`write_slide`), from an array or
  from `SyntheticTissue`, H&E-like tissue regions rendered tile by tile.
- `cohort`: the demo cohort, slides whose label only a model relating 20× texture to its 5× context can read
  (`make_cohort`), with a ground-truth region map per slide (`render_slide`, `REGION_CODES`).
- `bags`: in-memory nested multi-magnification bags (`nested_bag`) and cohorts of them with a planted signal
  (`planted_cohort`), written as feature files and labels.csv (`write_bag`, `write_planted_cohort`).
- `patches`: patch-image folders of two class textures at a chosen "magnification" (`write_patch_set`), named
  like BreakHis so patients can be grouped.
"""

from cmamil.synthetic.bags import PlantedSignal, nested_bag, planted_cohort, write_bag, write_planted_cohort
from cmamil.synthetic.cohort import REGION_CODES, CohortConfig, CohortSlide, make_cohort, render_slide
from cmamil.synthetic.patches import (
    PATCH_CLASSES,
    PATCH_PATIENT_PATTERN,
    PATCH_SPLIT_SIZES,
    texture_image,
    write_patch_set,
)
from cmamil.synthetic.slides import Region, SyntheticTissue, TileSource, write_slide

__all__ = [
    "PATCH_CLASSES",
    "PATCH_PATIENT_PATTERN",
    "PATCH_SPLIT_SIZES",
    "REGION_CODES",
    "CohortConfig",
    "CohortSlide",
    "PlantedSignal",
    "Region",
    "SyntheticTissue",
    "TileSource",
    "make_cohort",
    "nested_bag",
    "planted_cohort",
    "render_slide",
    "texture_image",
    "write_bag",
    "write_patch_set",
    "write_planted_cohort",
    "write_slide",
]
