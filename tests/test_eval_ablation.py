"""Image ablations: the seeded derangement, the variant images, the row draw and the ordering line."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.evaluation.ablation import VARIANTS, derangement, image_rows, ordering, report, variants


@pytest.mark.parametrize("n", [2, 3, 5, 50])
def test_derangement_has_no_fixed_points_and_is_seeded(n):
    for seed in range(20):
        order = derangement(n, random.Random(seed))
        assert sorted(order) == list(range(n))
        assert all(i != j for i, j in enumerate(order))
        assert order == derangement(n, random.Random(seed))
    assert len({tuple(derangement(n, random.Random(s))) for s in range(20)}) > 1 or n == 2


def test_derangement_needs_two():
    with pytest.raises(VlqcError, match="at least 2"):
        derangement(1, random.Random(0))


def rows_of_images():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    sizes = [(96, 64), (64, 128), (32, 32)]
    return [[Image.new("RGB", size, colour)] for size, colour in zip(sizes, colours)]


def test_variant_images_keep_each_rows_size():
    images = rows_of_images()
    out = variants(images, seed=4, noise_std=64.0)
    assert set(out) == set(VARIANTS)
    for variant in VARIANTS:
        assert [[im.size for im in row] for row in out[variant]] == [[im.size for im in row] for row in images]
    assert [row[0].tobytes() for row in out["correct"]] == [row[0].tobytes() for row in images]
    # shuffled: every row shows another row's picture (its colour), resized to this row's size
    colours = [row[0].getpixel((0, 0)) for row in images]
    shuffled = [row[0].getpixel((5, 5)) for row in out["shuffled"]]
    assert sorted(shuffled) == sorted(colours) and all(s != c for s, c in zip(shuffled, colours))
    assert all(row[0].getextrema() == ((0, 0), (0, 0), (0, 0)) for row in out["zero"])
    pixels = np.concatenate([np.asarray(row[0], dtype=float).ravel() for row in out["noise"]])
    assert abs(pixels.mean() - 127.5) < 3 and 55 < pixels.std() < 70  # clipping trims a little of the 64
    assert np.array_equal(np.asarray(variants(images, 4, 64.0)["noise"][1][0]), np.asarray(out["noise"][1][0]))
    assert not np.array_equal(np.asarray(variants(images, 5, 64.0)["noise"][1][0]), np.asarray(out["noise"][1][0]))


def test_image_rows_drawn_seeded_in_candidate_order():
    candidates = [{"id": f"r{i}", "images": [] if i % 3 == 0 else [f"{i}.jpg"]} for i in range(30)]
    with_images = [c for c in candidates if c["images"]]
    assert image_rows(candidates, 100, seed=1) == with_images
    drawn = image_rows(candidates, 8, seed=1)
    assert len(drawn) == 8 and drawn == image_rows(candidates, 8, seed=1) != image_rows(candidates, 8, seed=2)
    assert drawn == [c for c in with_images if c in drawn]
    with pytest.raises(VlqcError, match="at least 2 rows with images"):
        image_rows(candidates[:2], 8, seed=1)


def test_ordering_line_and_deltas():
    doc = report({"correct": 1.0, "shuffled": 1.5, "zero": 2.0, "noise": 1.75})
    assert doc["ordering_holds"] and doc["ordering"].endswith(": holds")
    assert (doc["delta_shuffle"], doc["delta_zero"], doc["delta_noise"]) == (0.5, 1.0, 0.75)
    assert not ordering({"correct": 1.0, "shuffled": 1.5, "zero": 2.0, "noise": 1.5})[0]  # strict
    assert not ordering({"correct": 1.6, "shuffled": 1.5, "zero": 2.0, "noise": 2.0})[0]
    assert ordering({"correct": 1.6, "shuffled": 1.5, "zero": 2.0, "noise": 2.0})[1].endswith("does not hold")
