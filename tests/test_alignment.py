"""MTCNN port and EG3D alignment against the alignment fixture folder (cases discovered from
``mtcnn_golden.json`` and ``align_params.json``), plus the behaviour users rely on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threedpe.alignment import (
    LANDMARK_NAMES,
    AlignParams,
    Face,
    NoFaceError,
    align_face,
    align_params,
    crop_aligned,
    detect_faces,
    get_detector,
    pick_face,
    align_reference,
)
from threedpe.images import load_image


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def mtcnn_golden(alignment_dir: Path) -> dict:
    return json.loads((alignment_dir / "mtcnn_golden.json").read_text())["images"]


@pytest.fixture(scope="module")
def align_golden(alignment_dir: Path) -> dict:
    return json.loads((alignment_dir / "align_params.json").read_text())["images"]


@pytest.fixture(scope="module")
def face_case(alignment_dir: Path, mtcnn_golden: dict) -> tuple[Image.Image, dict]:
    """The input with exactly one face and the largest face box, and its golden detection."""
    cases = [(c["faces"][0], c["file"]) for c in mtcnn_golden.values() if len(c["faces"]) == 1]
    face, file = max(cases, key=lambda fc: sum(fc[0]["box_xywh_int"][2:]))
    return load_image(alignment_dir / file), face


def _golden_keypoints(face: dict) -> np.ndarray:
    return np.array([face["keypoints_int"][name] for name in LANDMARK_NAMES], dtype=np.float64)


@pytest.mark.golden
def test_align_mtcnn_networks_match_keras(alignment_dir):
    vectors = np.load(alignment_dir / "mtcnn_nets_golden.npz")
    detector = get_detector()

    def run(net, key):
        with torch.no_grad():
            return [t.numpy() for t in net(torch.from_numpy(vectors[key]).permute(0, 3, 1, 2))]

    reg, prob = run(detector.pnet, "pnet_in")
    np.testing.assert_allclose(reg.transpose(0, 2, 3, 1), vectors["pnet_reg"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(prob, vectors["pnet_prob"][..., 1], atol=1e-4, rtol=0)
    reg, prob = run(detector.rnet, "rnet_in")
    np.testing.assert_allclose(reg, vectors["rnet_reg"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(prob, vectors["rnet_prob"][..., 1], atol=1e-4, rtol=0)
    reg, landmarks, prob = run(detector.onet, "onet_in")
    np.testing.assert_allclose(reg, vectors["onet_reg"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(landmarks, vectors["onet_lmk"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(prob, vectors["onet_prob"][..., 1], atol=1e-4, rtol=0)


@pytest.mark.golden
def test_align_detector_matches_reference(alignment_dir, mtcnn_golden):
    assert mtcnn_golden
    for name, case in mtcnn_golden.items():
        faces = detect_faces(alignment_dir / case["file"], max_side=None)
        assert len(faces) == len(case["faces"]), name
        for face, ref in zip(faces, case["faces"]):
            assert abs(face.confidence - ref["confidence"]) <= 2e-3, name
            np.testing.assert_allclose(face.landmarks, ref["landmarks_float"], atol=0.5, rtol=0, err_msg=name)
            np.testing.assert_allclose(face.box, ref["box_xyxy_float"], atol=1.0, rtol=0, err_msg=name)
            np.testing.assert_allclose(face.box_xywh, ref["box_xywh_int"], atol=1, rtol=0, err_msg=name)
            np.testing.assert_allclose(face.keypoints, _golden_keypoints(ref), atol=1, rtol=0, err_msg=name)


@pytest.mark.golden
def test_align_params_match_reference(alignment_dir, align_golden):
    assert align_golden
    for name, case in align_golden.items():
        size = Image.open(alignment_dir / case["input"]).size
        for kind in ("from_int_landmarks", "from_float_landmarks"):
            ref = case[kind]
            params = align_params(np.array(ref["lm_input_image_coords"]), size)
            label = f"{name} {kind}"
            assert params.scale_raw == pytest.approx(ref["pos_scale_raw"], rel=1e-9, abs=0), label
            assert params.s == pytest.approx(ref["s"], rel=1e-9, abs=0), label
            np.testing.assert_allclose(params.t, ref["t"], atol=1e-6, rtol=0, err_msg=label)
            assert params.resized_size == tuple(ref["resized_wh"]), label
            assert params.crop_box == tuple(ref["crop1_box_ltrb_in_resized"]), label
            assert params.center_crop_box == tuple(ref["crop2_box_ltrb_in_1024"]), label
        txt = alignment_dir / f"detections_{name}.txt"
        if txt.exists():
            np.testing.assert_array_equal(np.loadtxt(txt), case["from_int_landmarks"]["lm_input_image_coords"])


@pytest.mark.golden
def test_align_crops_match_reference(alignment_dir, align_golden):
    for name, case in align_golden.items():
        image = load_image(alignment_dir / case["input"])
        for kind, output in (("from_int_landmarks", "output"), ("from_float_landmarks", "output_floatlm")):
            params = align_params(np.array(case[kind]["lm_input_image_coords"]), image.size)
            reference = _read_png(alignment_dir / case[output])
            crop = np.asarray(crop_aligned(image, params)).astype(np.int16)
            assert crop.shape == reference.shape
            assert np.abs(crop - reference).max() <= 1, f"{name} {kind}"
            # the large-photo path (resampling only the final window) keeps the geometry
            windowed = np.asarray(crop_aligned(image, params, max_full_resize_pixels=0)).astype(np.int16)
            diff = np.abs(windowed - reference)
            assert diff.max() <= 3 and diff.mean() < 0.05, f"{name} {kind} windowed: {diff.max()} {diff.mean()}"


@pytest.mark.golden
def test_align_end_to_end_chain(alignment_dir, align_golden):
    """Own detector + own alignment, README step 5."""
    for name, case in align_golden.items():
        ref = case["from_int_landmarks"]
        result = align_face(alignment_dir / case["input"], max_detect_side=None)
        assert result.num_faces == 1 and result.image.size == (512, 512), name
        golden = np.array(ref["lm_input_image_coords"])
        assert np.abs(result.landmarks - golden).max() <= 1, name
        if np.array_equal(result.landmarks, golden):
            crop = np.asarray(result.image).astype(np.int16)
            assert np.abs(crop - _read_png(alignment_dir / case["output"])).max() <= 1, name
        else:
            assert result.params.s == pytest.approx(ref["s"], rel=0.01), name
            np.testing.assert_allclose(result.params.t, ref["t"], atol=1.5, err_msg=name)


@pytest.mark.golden
def test_align_no_face_gives_advice(alignment_dir, mtcnn_golden):
    empty = [case["file"] for case in mtcnn_golden.values() if not case["faces"]]
    assert empty
    for file in empty:
        with pytest.raises(NoFaceError, match="frontal, well-lit face"):
            align_face(alignment_dir / file)
    # a reference without a face is passed through unchanged
    original = load_image(alignment_dir / empty[0])
    kept, note = align_reference(alignment_dir / empty[0])
    assert kept.size == original.size and "No face" in note
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(original))


@pytest.mark.golden
def test_align_reference_with_face_is_aligned(face_case):
    image, _ = face_case
    reference, note = align_reference(image)
    assert reference.size == (512, 512) and "aligned like the input" in note
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(align_face(image).image))


@pytest.mark.golden
def test_an_aligned_reference_is_used_as_given(face_case):
    """Aligning an aligned crop again would resample it (and pad black strips); it is kept pixel for pixel."""
    crop = align_face(face_case[0]).image
    kept, note = align_reference(crop)
    assert "already an aligned portrait" in note
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(crop))


@pytest.mark.golden
def test_align_several_faces_uses_largest(face_case):
    image, golden = face_case
    eyes = np.array(golden["landmarks_float"][:2])
    # a visibly smaller second face that MTCNN still finds confidently (eyes >= ~36 px apart when possible)
    scale = min(0.75, max(0.5, 36 / np.linalg.norm(eyes[1] - eyes[0])))
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (image.width + small.width, image.height), (255, 255, 255))
    canvas.paste(small, (0, 0))
    canvas.paste(image, (small.width, 0))
    result = align_face(canvas)
    assert result.num_faces == 2
    assert any("2 faces" in note for note in result.warnings)
    shifted = np.array(golden["landmarks_float"]) + [small.width, 0]
    np.testing.assert_allclose(result.face.landmarks, shifted, atol=1.5)


@pytest.mark.golden
def test_align_large_photo_keeps_geometry(face_case):
    image, golden = face_case
    factor = 3000 / max(image.size)
    large = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    # detection runs on a ≤1024 px copy; results come back in full-resolution pixels (centre convention)
    copy = large.resize((round(large.width * 1024 / 3000), round(large.height * 1024 / 3000)),
                        Image.Resampling.LANCZOS)
    on_copy = detect_faces(copy, max_side=None)
    on_large = detect_faces(large, max_side=1024)
    assert len(on_large) == len(on_copy) >= 1
    zoom = np.array(large.size) / np.array(copy.size)
    np.testing.assert_allclose(on_large[0].landmarks, (on_copy[0].landmarks + 0.5) * zoom - 0.5, atol=1e-6)
    assert max(on_large[0].box[2::2]) <= large.width - 1 and max(on_large[0].box[3::2]) <= large.height - 1

    # and the crop geometry matches the original's (the detector sees a resampled face: ±2 px at 512)
    result = align_face(large)
    original = align_params(_golden_keypoints(golden), image.size)
    points = np.array(golden["landmarks_float"])
    np.testing.assert_allclose(result.face.landmarks, (points + 0.5) * factor - 0.5, atol=2.0 * factor)
    assert result.params.s * factor == pytest.approx(original.s, rel=0.03)
    moved = result.params.project((points + 0.5) * factor - 0.5) - original.project(points)
    assert np.abs(moved).max() <= 6.0, moved


@pytest.mark.golden
def test_align_small_face_warning(face_case):
    image, golden = face_case
    eyes = np.array(golden["landmarks_float"][:2])
    distance = np.linalg.norm(eyes[1] - eyes[0])
    result = align_face(image)
    assert any("small" in note for note in result.warnings) == (result.face.eye_distance < 32)
    factor = 22 / distance
    smaller = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    result = align_face(smaller)
    assert any("small" in note for note in result.warnings), result.warnings


def test_pick_face_prefers_largest_confident():
    def face(size: float, confidence: float) -> Face:
        return Face((0.0, 0.0, size, size), confidence, np.zeros((5, 2)))

    faces = [face(50, 0.999), face(200, 0.85), face(120, 0.95), face(30, 0.99)]
    assert pick_face(faces) is faces[2]
    assert pick_face(faces, min_confidence=0.8) is faces[1]
    assert pick_face([face(100, 0.9)]) is None  # strict threshold, as EG3D
    assert pick_face([]) is None


def test_align_params_shapes_and_types():
    landmarks = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]])
    params = align_params(landmarks, (128, 160))
    assert isinstance(params, AlignParams)
    assert params.center_crop_box == (162, 162, 862, 862) and params.output_size == 512
    assert params.crop_box[2] - params.crop_box[0] == 1024
    # a symmetric face is centred horizontally in the crop; scaling the photo scales s inversely
    assert params.project(landmarks)[:2, 0].mean() == pytest.approx(255.5, abs=2)
    doubled = align_params(landmarks * 2 + 0.5, (256, 320))
    assert doubled.s * 2 == pytest.approx(params.s, rel=1e-9)
    with pytest.raises(ValueError, match="computed for"):
        crop_aligned(Image.new("RGB", (10, 10)), params)


def test_project_follows_the_crop_pixels():
    """A small blob drawn at a source point appears in the crop where ``project`` says."""
    landmarks = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]])
    params = align_params(landmarks, (128, 160))
    yy, xx = np.mgrid[0:160, 0:128]
    for point in ([52.3, 61.8], [71.0, 83.6]):
        blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 1.5**2))
        crop = np.asarray(crop_aligned(load_image(np.repeat(blob[..., None], 3, axis=2)), params))[..., 0]
        weight = crop.astype(np.float64)
        weight[weight < 20] = 0
        v, u = np.mgrid[0:512, 0:512]
        centroid = np.array([(u * weight).sum(), (v * weight).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, params.project(point), atol=0.25)
