"""Image ablations: does a checkpoint read its photos? (docs/evaluation.md#image-ablations)

The same image rows are scored four times (token-weighted eval loss, `vlqc.evaluation.loss`):
- `correct`: the row's own image, fitted to the run's cap;
- `shuffled`: another row's image (a seeded derangement: no row keeps its own), resized to this
  row's image size, so every sequence keeps its length and only the content changes;
- `zero`: a black image of the same size;
- `noise`: Gaussian noise of the same size, mean mid-grey (127.5), `noise_std` in 0–255 units, clipped.

`delta_<variant>` is the variant's loss minus the correct loss. A model that reads its photos
has correct < shuffled (a real photo of the wrong scene misleads less than no photo only if the
model uses it) < min(zero, noise) (no photo at all). That ordering is reported (`ordering_holds`,
strict), never enforced: a tiny or untrained model may well ignore its images.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vlqc.errors import VlqcError

VARIANTS = ("correct", "shuffled", "zero", "noise")
NOISE_MEAN = 127.5  # mid-grey
# Random permutations drawn before one without fixed points; ~e are needed on average.
DERANGEMENT_DRAWS = 1000


def image_rows(candidates: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """`n` of the candidates with images (all if fewer), drawn with `seed`, in candidate order."""
    with_images = [row for row in candidates if row["images"]]
    if len(with_images) < 2:
        raise VlqcError(f"image ablations need at least 2 rows with images, the candidates have {len(with_images)}")
    if len(with_images) <= n:
        return with_images
    keep = sorted(random.Random(seed).sample(range(len(with_images)), n))
    return [with_images[i] for i in keep]


def derangement(n: int, rng: random.Random) -> list[int]:
    """A permutation of range(n) without fixed points, uniform over those, drawn from `rng`."""
    if n < 2:
        raise VlqcError(f"a derangement needs at least 2 items, not {n}")
    order = list(range(n))
    for _ in range(DERANGEMENT_DRAWS):
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order
    raise VlqcError(f"no derangement of {n} items in {DERANGEMENT_DRAWS} draws")  # p ≈ e^-1000: unreachable


def variants(
    images: Sequence[Sequence[Image.Image]], seed: int, noise_std: float
) -> dict[str, list[list[Image.Image]]]:
    """The images of every row in each variant; each variant image has the size of the correct one."""
    rng = random.Random(seed)
    order = derangement(len(images), rng)
    noise = np.random.default_rng(seed)
    out: dict[str, list[list[Image.Image]]] = {variant: [] for variant in VARIANTS}
    for row, own in enumerate(images):
        other = images[order[row]]
        out["correct"].append(list(own))
        out["shuffled"].append(
            [other[k % len(other)].resize(im.size, Image.Resampling.BICUBIC) for k, im in enumerate(own)]
        )
        out["zero"].append([Image.new("RGB", im.size, (0, 0, 0)) for im in own])
        out["noise"].append(
            [
                Image.fromarray(
                    np.clip(noise.normal(NOISE_MEAN, noise_std, (im.height, im.width, 3)), 0, 255)
                    .round()
                    .astype(np.uint8)
                )
                for im in own
            ]
        )
    return out


def ordering(loss: Mapping[str, float]) -> tuple[bool, str]:
    """Whether correct < shuffled < min(zero, noise), and the line that says so."""
    worst = min(loss["zero"], loss["noise"])
    holds = loss["correct"] < loss["shuffled"] < worst
    line = (
        f"correct {loss['correct']:.4f} < shuffled {loss['shuffled']:.4f} < min(zero {loss['zero']:.4f}, "
        f"noise {loss['noise']:.4f}): {'holds' if holds else 'does not hold'}"
    )
    return holds, line


def report(loss: Mapping[str, float]) -> dict[str, Any]:
    """The loss keys of schema eval_ablation: per variant, the deltas and the ordering."""
    holds, line = ordering(loss)
    return {
        "loss": dict(loss),
        "delta_shuffle": loss["shuffled"] - loss["correct"],
        "delta_zero": loss["zero"] - loss["correct"],
        "delta_noise": loss["noise"] - loss["correct"],
        "ordering_holds": holds,
        "ordering": line,
    }
