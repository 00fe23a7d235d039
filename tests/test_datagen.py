"""Training data for customisation: the failed-edit check, synthetic EG3D samples, pairs, and photo pairs."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from tests.fixtures import ColourEditor
from threedpe.alignment import align_face, crop_aligned
from threedpe.anchors import shipped_anchors
from threedpe.edit_settings import EditSettings
from threedpe.training.objective import random_novel_camera
from threedpe.training.samples import (POSE_RANGES, DataError, EditCheck, SyntheticSamples, load_generator, photo_pairs,
                                       shard_seeds, training_pairs, usable)
from threedpe.weights import MissingWeightsError

SMALL_EDITS = EditSettings(resolution=128)
SEEDS = [0, 1, 2, 4, 5, 6]  # tiny random renders with some contrast (seeds 3 and 7 render nearly flat images)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator(tiny_weights):
    return load_generator(tiny_weights)


def _tint(image: Image.Image) -> Image.Image:
    return ColourEditor().edit([image], "tint", EditSettings(resolution=image.width), 0)[0]


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def test_edit_check_thresholds_on_measured_proxies():
    portrait = shipped_anchors()[0].image()
    sunglasses = portrait.copy()
    draw = ImageDraw.Draw(sunglasses)
    draw.ellipse((150, 205, 245, 260), fill=(10, 10, 10))
    draw.ellipse((275, 205, 370, 260), fill=(10, 10, 10))
    cases = {
        "unchanged": (portrait, "changed almost nothing"),
        "jpeg q50": (_jpeg(portrait, 50), "changed almost nothing"),
        "blur 1.5 px": (portrait.filter(ImageFilter.GaussianBlur(1.5)), "changed almost nothing"),
        "x8 down-up (VAE bound)": (portrait.resize((64, 64), Image.Resampling.BICUBIC).resize((512, 512)),
                                   "changed almost nothing"),
        "warm tint": (_tint(portrait), None),
        "sunglasses (local)": (sunglasses, None),
        "flat grey": (Image.new("RGB", (512, 512), (128, 128, 128)), "nearly uniform"),
        "black": (Image.new("RGB", (512, 512)), "nearly uniform"),
    }
    check = EditCheck()
    for label, (edited, expected) in cases.items():
        measured = check.measure(portrait, edited)
        print(f"{label:24s} changed area {measured['changed_area']:.4f}  contrast {measured['contrast']:.3f}")
        failure = check(portrait, edited)
        assert (failure is None) if expected is None else (expected in failure), (label, failure)


def test_failed_edits_are_dropped_and_pairs_reference_another_identity(generator):
    editor = ColourEditor(failures={1: "unchanged", 3: "uniform"})  # the 2nd and 4th images edited
    source = SyntheticSamples(generator, editor, "make it golden", settings=SMALL_EDITS, batch_size=4)
    samples = list(source.samples(SEEDS))
    assert [s.seed for s in samples] == SEEDS and editor.calls == len(SEEDS)
    failures = {s.seed: s.failure for s in samples if s.failure}
    assert set(failures) == {1, 4}
    assert "changed almost nothing" in failures[1] and "nearly uniform" in failures[4]
    assert all(s.before.size == s.after.size == (512, 512) for s in samples)
    pairs = training_pairs(samples)
    kept = {s.name for s in usable(samples)}
    assert len(pairs) == len(kept) * (len(kept) - 1)
    assert all(p.reference_name != p.name for p in pairs)
    assert {p.name for p in pairs} == {p.reference_name for p in pairs} == kept
    few = training_pairs(samples, references=1, seed=3)
    assert len(few) == len(kept) and all(p.reference_name != p.name and p.reference_name in kept for p in few)
    assert samples[0].relative_path() == "00000/img00000000.png"
    assert samples[0].relative_path("golden statue") == "00000_golden statue/img00000000.png"
    with pytest.raises(DataError, match="at least 2 usable samples"):
        training_pairs(samples[1:2])


def test_samples_are_deterministic_per_seed_and_cached(generator, tmp_path):
    first = SyntheticSamples(generator, ColourEditor(), "make it golden", settings=SMALL_EDITS, batch_size=2,
                             cache_dir=tmp_path)
    batch = {s.seed: s for s in first.samples([5, 0, 2])}
    again = ColourEditor()
    alone = SyntheticSamples(generator, again, "make it golden", settings=SMALL_EDITS, batch_size=1,
                             cache_dir=tmp_path)
    [sample] = list(alone.samples([2]))
    assert again.calls == 0  # served from the disk cache
    assert np.array_equal(np.asarray(sample.before), np.asarray(batch[2].before))
    assert np.array_equal(np.asarray(sample.after), np.asarray(batch[2].after))
    assert torch.equal(sample.camera, batch[2].camera)
    cams, pose = random_novel_camera(1, torch.Generator().manual_seed(2), POSE_RANGES)
    assert torch.equal(sample.camera, cams[0])
    assert abs(pose[1].item() - math.pi / 2) <= math.radians(49) and abs(pose[0].item() - math.pi / 2) <= math.radians(26)
    other = SyntheticSamples(generator, ColourEditor(), "make it bronze", settings=SMALL_EDITS, cache_dir=tmp_path)
    assert other.cache_key(sample.before)[0] != alone.cache_key(sample.before)[0]
    assert shard_seeds(10, rank=1, world_size=3) == [1, 4, 7]
    assert sorted(sum((shard_seeds(10, 5, r, 3) for r in range(3)), [])) == list(range(5, 15))


def test_missing_eg3d_weights_name_the_file_and_the_photo_pairs_alternative(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        load_generator(tmp_path)
    message = str(caught.value)
    assert "ffhqrebalanced512-128" in message and "before/after photo pairs works without it" in message


def _write_pairs(folder, pairs: dict[str, tuple[Image.Image, Image.Image]]) -> None:
    for side in ("before", "after"):
        (folder / side).mkdir(parents=True, exist_ok=True)
    for name, (before, after) in pairs.items():
        before.save(folder / "before" / f"{name}.png")
        after.save(folder / "after" / f"{name}{'.jpg' if name == 'b' else '.png'}", quality=95)  # any extension


def test_photo_pairs_crop_before_and_after_identically(astronaut_photo, tmp_path):
    photo = Image.open(astronaut_photo).convert("RGB")
    mirrored = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    _write_pairs(tmp_path, {"a": (photo, _tint(photo)), "b": (mirrored, _tint(mirrored)), "c": (photo, photo)})
    samples = photo_pairs(tmp_path)
    assert [s.name for s in samples] == ["a", "b", "c"]
    face = align_face(photo)
    assert np.array_equal(np.asarray(samples[0].before), np.asarray(face.image))
    assert np.array_equal(np.asarray(samples[0].after), np.asarray(crop_aligned(_tint(photo), face.params)))
    assert np.array_equal(np.asarray(samples[2].before), np.asarray(samples[2].after))  # same photo, same crop
    assert samples[0].failure is None and samples[1].failure is None
    assert "changed almost nothing" in samples[2].failure
    assert all(s.before.size == (512, 512) and s.seed is None for s in samples)
    aligned = photo_pairs(tmp_path, aligned=True)
    assert aligned[0].before.size == (512, 512) and np.array_equal(np.asarray(aligned[0].before), np.asarray(photo))


def test_photo_pairs_refuse_mismatched_folders(tmp_path):
    image = Image.new("RGB", (64, 64), (90, 30, 30))
    with pytest.raises(DataError, match="before/ and after/"):
        photo_pairs(tmp_path)
    for name, side in (("a", "before"), ("b", "before"), ("a", "after"), ("c", "after")):
        (tmp_path / side).mkdir(exist_ok=True)
        image.save(tmp_path / side / f"{name}.png")
    with pytest.raises(DataError) as caught:
        photo_pairs(tmp_path)
    assert "only in before/: b" in str(caught.value) and "only in after/: c" in str(caught.value)
    (tmp_path / "before" / "b.png").unlink()
    (tmp_path / "after" / "c.png").unlink()
    Image.new("RGB", (80, 64)).save(tmp_path / "after" / "a.png")
    with pytest.raises(DataError, match="differ in size"):
        photo_pairs(tmp_path, aligned=True)
