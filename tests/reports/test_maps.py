"""Attribution maps against slow per-pixel reference loops over auditor.store.attribution.pixel_attribution."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from auditor.store import attribution, database, datasets
from auditor.store.read_models.sample import SampleProvenance
from reports import maps


def _pixel_images(attr, y, x) -> dict[int, float]:
    """Reference: the images (mirrored copy counted with the image) and their weight in pixel (y, x)."""
    column = np.asarray(attr["weights"][:, y, x])
    images = np.asarray(attr["image_index"])
    weights: dict[int, float] = {}
    for e in np.flatnonzero(column > 0):  # the entries with weight in this pixel
        image = int(images[e])
        weights[image] = weights.get(image, 0.0) + float(column[e])
    return weights


def _reference_dominant(attr, legend: list[int]):
    height, width = attr["weights"].shape[1:]
    rgb = np.zeros((height, width, 3), np.uint8)
    dominant = np.full((height, width), -1)
    for y in range(height):
        for x in range(width):
            weights = _pixel_images(attr, y, x)
            if weights:
                best = max(weights.values())
                dominant[y, x] = min(i for i, w in weights.items() if w == best)
            colour = maps.PALETTE[legend.index(dominant[y, x])] if dominant[y, x] in legend else maps.OTHER_COLOUR
            rgb[y, x] = maps.hex_to_rgb(colour)
    return rgb, dominant


def _attributions(store):
    with database.connect(store.db, read_only=True) as conn:
        steps = [r[0] for r in conn.execute("SELECT DISTINCT step FROM steps WHERE run_id = ? ORDER BY step",
                                            [store.complete_run]).fetchall()]
    for step in (steps[0], steps[len(steps) // 2], steps[-1]):
        attr = attribution.pixel_attribution(store.db, store.complete_run, 0, step)
        yield step, {key: value.numpy() for key, value in attr.items()}


@pytest.mark.parametrize("name", ["random_store", "fashion_store"])
def test_dominant_map_equals_the_per_pixel_reference(request, name):
    store = request.getfixturevalue(name)
    for step, attr in _attributions(store):
        legend = [s["image_index"] for s in attribution.sample_sources(store.db, store.complete_run, 0, step=step,
                                                                       top=4)]
        result = maps.dominant_source_map(attr, legend)
        rgb, dominant = _reference_dominant(attr, legend)
        assert np.array_equal(result.dominant, dominant)
        assert np.array_equal(result.rgb, rgb)
        assert [e.image_index for e in result.legend] == legend + [None]
        for entry in result.legend[:-1]:
            assert entry.pixels == pytest.approx(float((dominant == entry.image_index).mean()))
        assert sum(e.pixels for e in result.legend) == pytest.approx(1.0)


def test_dominant_map_breaks_ties_by_smaller_image_and_greys_unlisted_images():
    weights = np.zeros((4, 1, 3))
    weights[0, 0] = [0.5, 0.2, 0.0]  # image 5
    weights[1, 0] = [0.0, 0.1, 0.0]  # image 3, mirrored: with image 3's plain entry 0.3 > 0.2
    weights[2, 0] = [0.5, 0.2, 0.0]  # image 3: ties image 5 at x = 0 -> the smaller index, 3
    weights[3, 0] = [0.0, 0.0, 0.0]  # image 8: no weight anywhere
    attr = {"image_index": np.array([5, 3, 3, 8]), "flip": np.array([False, True, False, False]), "weights": weights}
    result = maps.dominant_source_map(attr, [5])
    assert result.dominant.tolist() == [[3, 3, -1]]
    assert [tuple(c) for c in result.rgb[0]] == [maps.hex_to_rgb(maps.OTHER_COLOUR)] * 3
    result = maps.dominant_source_map(attr, [3, 5], palette=["#010203", "#040506"])
    assert [tuple(c) for c in result.rgb[0]] == [(1, 2, 3), (1, 2, 3), maps.hex_to_rgb(maps.OTHER_COLOUR)]
    with pytest.raises(ValueError, match="distinct"):
        maps.dominant_source_map(attr, [3, 3])


@pytest.mark.parametrize("kind", ["top1", "entropy"])
def test_concentration_equals_the_per_pixel_reference(random_store, kind):
    num_images = len(random_store.training_set)
    for _, attr in _attributions(random_store):
        values, rgb = maps.concentration_map(attr, kind, num_images)
        height, width = values.shape
        for y in range(height):
            for x in range(width):
                weights = _pixel_images(attr, y, x)
                total = sum(weights.values())
                if kind == "top1":
                    expected = max(weights.values()) / total
                else:
                    expected = -sum(w / total * math.log(w / total) for w in weights.values()) / math.log(num_images)
                assert values[y, x] == pytest.approx(expected, abs=1e-12)
        shown = values if kind == "top1" else 1 - values
        table = maps.colormap_table("viridis")
        assert np.array_equal(rgb, table[np.round(np.clip(shown, 0, 1) * 255).astype(int)])


def test_concentration_marks_pixels_without_weight_and_checks_its_kind():
    attr = {"image_index": np.array([1]), "flip": np.array([False]), "weights": np.array([[[0.4, 0.0]]])}
    values = maps.concentration_values(attr, "top1")
    assert values[0, 0] == 1.0 and np.isnan(values[0, 1])
    _, rgb = maps.concentration_map(attr, "top1")
    assert tuple(rgb[0, 1]) == maps.hex_to_rgb(maps.OTHER_COLOUR)
    with pytest.raises(ValueError, match="kind"):
        maps.concentration_values(attr, "gini")
    with pytest.raises(ValueError, match="num_images"):
        maps.concentration_values(attr, "entropy")


def test_colormap_ends_are_viridis():
    rgb = maps.colormap(np.array([[0.0, 1.0, -3.0, 7.0]]))
    assert tuple(rgb[0, 0]) == (68, 1, 84) and tuple(rgb[0, 1]) == (253, 231, 37)
    assert tuple(rgb[0, 2]) == tuple(rgb[0, 0]) and tuple(rgb[0, 3]) == tuple(rgb[0, 1])


def test_nearest_enlargement_is_exact():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for scale in (1, 2, 5):
        big = maps.enlarge(rgb, scale)
        assert big.shape == (5 * scale, 7 * scale, 3)
        for y in range(big.shape[0]):
            for x in range(big.shape[1]):
                assert tuple(big[y, x]) == tuple(rgb[y // scale, x // scale])
    with pytest.raises(ValueError, match="scale"):
        maps.enlarge(rgb, 0)


def test_image_rgb_rounds_like_to_uint8_and_replicates_grey():
    from pspc.data.training_set import to_uint8
    import torch

    image = torch.linspace(-1.2, 1.2, 12).reshape(1, 3, 4)
    rgb = maps.image_rgb(image)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 1], to_uint8(image)[0].numpy())
    colour = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(3, 2, 2)
    assert np.array_equal(maps.image_rgb(colour), colour.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        maps.image_rgb(np.zeros((2, 4, 4)))


def _border_reference(height, width, box, scale, thickness):
    """Enlarged pixels on the outline of `box`: inside the box, within `thickness` of its edge."""
    out = set()
    y0, x0 = box.top * scale, box.left * scale
    y1, x1 = (box.top + box.height) * scale, (box.left + box.width) * scale
    for y in range(y0, y1):
        for x in range(x0, x1):
            if y < y0 + thickness or y >= y1 - thickness or x < x0 + thickness or x >= x1 - thickness:
                out.add((y, x))
    return out


def test_outlines_are_drawn_exactly_on_the_boxes():
    pixels = np.full((1, 6, 8), 0, np.uint8)  # black image: any non-black pixel is outline
    box = maps.Box(top=1, left=2, height=3, width=4)
    rgb = maps.outlined_thumbnail(pixels, [box], scale=3, colour="#ff0000", thickness=1)
    drawn = {(int(y), int(x)) for y, x in zip(*np.nonzero(rgb.any(axis=2)))}
    assert drawn == _border_reference(18, 24, box, 3, 1)
    assert all(tuple(rgb[y, x]) == (255, 0, 0) for y, x in drawn)
    thick = maps.outlined_thumbnail(pixels, [box], scale=4, colour="#ff0000", thickness=2)
    assert {(int(y), int(x)) for y, x in zip(*np.nonzero(thick.any(axis=2)))} == _border_reference(24, 32, box, 4, 2)
    # a mirrored box is dashed: on the same outline, with gaps
    dashed = maps.outlined_thumbnail(pixels, [maps.Box(top=1, left=2, height=3, width=4, flip=True)], scale=3,
                                     colour="#ff0000")
    on = {(int(y), int(x)) for y, x in zip(*np.nonzero(dashed.any(axis=2)))}
    assert on < drawn and len(on) > len(drawn) // 3
    with pytest.raises(ValueError, match="outside"):
        maps.outlined_thumbnail(pixels, [maps.Box(top=4, left=0, height=3, width=3)], scale=2)


def test_outlines_sit_on_the_training_pixels_the_patch_took_including_mirrored_ones(random_store):
    """For every kept weight of the last step: the stored box (source_top, source_left) is
    where the patch's pixels lie in the ORIGINAL training image. Mirrored entries: the
    output patch equals the mirrored training image's pixels at the output box, i.e. the
    original image's pixels in the mirrored box, read right to left."""
    data = random_store.training_set
    with database.connect(random_store.db, read_only=True) as conn:
        rows = conn.execute("""
            SELECT w.flip, w.source_top, w.source_left, p.top, p."left", p.height, p.width, w.image_index
            FROM patch_weights w
            JOIN steps s USING (run_id, sample_index, step)
            JOIN patch_positions p ON p.patch_set_id = s.patch_set_id AND p.position = w.position
            WHERE w.run_id = ? AND w.sample_index = 0 AND w.step = 3""", [random_store.complete_run]).fetchall()
    assert any(r[0] for r in rows) and not all(r[0] for r in rows)
    images = data.images.numpy()
    width = images.shape[3]
    for flip, top, left, out_top, out_left, h, w, image in rows:
        if flip:
            assert (top, left) == (out_top, width - out_left - w)
            mirrored = images[image][:, :, ::-1]
            assert np.array_equal(mirrored[:, out_top:out_top + h, out_left:out_left + w],
                                  images[image][:, top:top + h, left:left + w][:, :, ::-1])
        else:
            assert (top, left) == (out_top, out_left)
        box = maps.Box(top=top, left=left, height=h, width=w, flip=bool(flip))
        rgb = maps.outlined_thumbnail(np.zeros((3, 8, 8), np.uint8), [box], 4, "#ffffff", thickness=1)
        drawn = {(int(y), int(x)) for y, x in zip(*np.nonzero(rgb.any(axis=2)))}
        assert drawn <= _border_reference(32, 32, maps.Box(top=top, left=left, height=h, width=w), 4, 1) and drawn


def test_png_round_trip_and_grey_images():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(maps.png_bytes(rgb))).convert("RGB")), rgb)
    grey = np.repeat(rgb[..., :1], 3, axis=2)
    decoded = Image.open(io.BytesIO(maps.png_bytes(grey)))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded.convert("RGB")), grey)
    assert maps.data_uri(b"\x89PNG").startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="RGB"):
        maps.png_bytes(np.zeros((2, 2, 4), np.uint8))


def test_store_level_map_png_matches_the_in_memory_maps(random_store):
    db, run = random_store.db, random_store.complete_run
    attr = attribution.pixel_attribution(db, run, 1, 2)
    legend = [s["image_index"] for s in attribution.sample_sources(db, run, 1, step=2, top=3)]
    data = SampleProvenance.load(db, run, 1, images=lambda d: maps.map_legend_images(d, 2, top=3))
    rgb, entries = maps.attribution_map(data, 2, top=3)
    assert np.array_equal(rgb, maps.dominant_source_map(attr, legend).rgb)
    assert [e.image_index for e in entries] == legend + [None] and entries[-1].label == "other"
    assert entries[0].label == attribution.sample_sources(db, run, 1, step=2, top=1)[0]["image_id"]
    png = maps.attribution_map_png(data, 2, kind="concentration", scale=3)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    _, expected = maps.concentration_map(attr, "top1")
    assert np.array_equal(decoded, maps.enlarge(expected, 3))
    final, _ = maps.attribution_map(data)  # default: the last step
    assert np.array_equal(final, maps.attribution_map(data, 3)[0])
    with pytest.raises(ValueError, match="kind"):
        maps.attribution_map(data, kind="heat")
    pixels = datasets.training_pixels(db, 1, [4])[0]
    thumb = np.asarray(Image.open(io.BytesIO(maps.thumbnail_png(pixels, scale=2))).convert("RGB"))
    assert np.array_equal(thumb, maps.enlarge(maps.image_rgb(random_store.training_set.images[4].numpy()), 2))
