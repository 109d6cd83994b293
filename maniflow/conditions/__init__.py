"""Model conditions: which images of a dataset the policy sees.

    original                 current RGB                      ({env}_original_{task}.zarr)
    overlay_current          current overlay                  ({env}_overlay_{task}.zarr)
    overlay_initial_current  the episode's frame-0 overlay + current overlay
    concat_current           current RGB + path image, 6 channels ({env}_concat_{task}.zarr)
    concat_initial_current   frame 0 and current, 6 channels each

The first three are the experiment matrix's (`in_matrix`). A new condition is one module in
this package that calls `CONDITIONS.register` (docs/extending.md); the CLI, the flows, training,
evaluation and the report take the list from here. The report shows conditions in this order.
"""

from __future__ import annotations

from dataclasses import dataclass

from maniflow.registry import Registry


@dataclass(frozen=True)
class Condition:
    name: str
    dataset: str  # dataset type: original, overlay or concat (maniflow.workspace.DATASET_KINDS)
    keys: tuple[str, ...]  # image arrays of that dataset, concatenated along channels
    initial: bool  # also the episode's first frame
    in_matrix: bool = False  # one of the experiment matrix's default conditions


CONDITIONS: Registry[Condition] = Registry("model condition", __name__)


def register(condition: Condition) -> Condition:
    return CONDITIONS.register(condition.name, condition)


def matrix_conditions() -> list[str]:
    return [c.name for c in CONDITIONS.values() if c.in_matrix]


for _c in (Condition("original", "original", ("image",), False, in_matrix=True),
           Condition("overlay_current", "overlay", ("overlay_image",), False, in_matrix=True),
           Condition("overlay_initial_current", "overlay", ("overlay_image",), True, in_matrix=True),
           Condition("concat_current", "concat", ("image", "path_image"), False),
           Condition("concat_initial_current", "concat", ("image", "path_image"), True)):
    register(_c)
