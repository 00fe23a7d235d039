"""PortraitEditor end to end on the tiny random weights: every output kind, the text route's cache, errors."""
from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from threedpe import pipeline
from threedpe.alignment import NoFaceError
from threedpe.diffusion import PromptError
from threedpe.edit_settings import EditSettings
from threedpe.mesh import extract_mesh
from threedpe.pipeline import PortraitEditor
from threedpe.weights import CheckpointError, MissingWeightsError

FAST_TEXT = EditSettings()  # the defaults: 20 steps at 512^2 take about a second on the tiny model


@pytest.fixture(scope="module")
def editor(tiny_weights, tmp_path_factory) -> PortraitEditor:
    return PortraitEditor.from_pretrained(tiny_weights, cache_dir=tmp_path_factory.mktemp("reference-cache"))


@pytest.fixture(scope="module")
def result(editor, astronaut_photo, tmp_path_factory):
    reference = tmp_path_factory.mktemp("ref") / "stripes.png"
    Image.fromarray((np.indices((96, 96)).sum(0) % 16 * 16).astype(np.uint8)).convert("RGB").save(reference)
    return editor(astronaut_photo, reference=reference)


def test_reference_edit_aligns_and_encodes(editor, result):
    assert editor.untrained and any("UNTRAINED" in w for w in result.warnings)
    assert result.alignment is not None and result.alignment.num_faces == 1
    assert result.image.size == (512, 512)
    assert result.reference.size == (96, 96)  # used as given
    assert result.planes.shape == (1, 96, 64, 64) and result.planes.dtype == torch.float32  # tiny: 128^2 input
    assert set(result.timings) == {"align", "reference", "encode"}
    assert result.edited_2d is None


def test_views_strip_and_depth(result):
    front = result.view()
    assert front.size == (128, 128) and front.mode == "RGB"
    assert np.array_equal(np.asarray(front), np.asarray(result.view(0, 0)))  # deterministic, degrees from frontal
    assert not np.array_equal(np.asarray(front), np.asarray(result.view(30, 0)))
    strip = result.strip()
    assert strip.size == (3 * 128, 128)
    assert np.array_equal(np.asarray(strip)[:, 128:256], np.asarray(front))
    depth = result.depth()
    assert depth.mode == "L" and depth.size == (128, 128) and np.asarray(depth).max() > 0
    rendered = result.timings["render"]  # every view rendered so far, summed
    assert set(result.timings) == {"align", "reference", "encode", "render"} and rendered > 0
    result.view(-20, 10)
    assert result.timings["render"] > rendered


def test_video_and_mesh(result, tmp_path, monkeypatch):
    video = result.video(tmp_path / "orbit.mp4", num_frames=6, fps=12)
    assert result.timings["video"] > 0
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    frames = list(reader)
    assert meta["codec"].startswith("h264") and meta["size"] == (128, 128) and len(frames) == 6
    for suffix in (".glb", ".ply"):
        [path] = result.mesh(tmp_path / f"head{suffix}", resolution=32)
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert {"video", "mesh"} <= set(result.timings) and result.timings["mesh"] > 0
    grids = []  # the default grid is as fine as the tri-planes
    monkeypatch.setattr(pipeline, "extract_mesh", lambda *args, **kwargs: grids.append(kwargs["resolution"])
                        or extract_mesh(*args, **kwargs))
    result.mesh(tmp_path / "default.glb")
    assert grids == [result.planes.shape[-1]]


def test_aligned_input_skips_detection(editor, tmp_path):
    crop = tmp_path / "crop.png"
    Image.fromarray(np.full((300, 300, 3), 120, np.uint8)).save(crop)  # no face: detection would fail
    result = editor(crop, reference=crop, aligned=True)
    assert result.alignment is None and result.image.size == (512, 512)
    assert any("nearly uniform" in note for note in result.warnings)  # the reference has nothing to copy


def test_references_are_used_as_given_unless_alignment_is_asked_for(editor, astronaut_photo):
    given = editor(astronaut_photo, reference=astronaut_photo)
    assert given.reference.size == Image.open(astronaut_photo).size  # the official preprocessing resizes it later
    aligned = editor(astronaut_photo, reference=astronaut_photo, align_reference=True)
    assert aligned.reference.size == (512, 512)
    assert np.array_equal(np.asarray(aligned.reference), np.asarray(aligned.image))
    assert any("aligned like the input" in note for note in aligned.warnings)
    crop = editor(astronaut_photo, reference=aligned.image, align_reference=True)  # already aligned: kept as is
    assert np.array_equal(np.asarray(crop.reference), np.asarray(aligned.image))
    assert any("already an aligned portrait" in note for note in crop.warnings)


def test_text_edits_choose_their_anchor_and_say_which(editor, astronaut_photo):
    names = [anchor.name for anchor in editor.anchors]
    assert names[:6] == [f"eg3d-seed{seed}" for seed in range(6)] and "astronaut" in names  # tiny EG3D + photos
    first = editor(astronaut_photo, prompt="make it golden", settings=FAST_TEXT)
    assert first.anchor == "EG3D sample, seed 0"
    other = editor(astronaut_photo, prompt="make it golden", settings=FAST_TEXT, anchor="astronaut")
    assert other.anchor.startswith("Astronaut photo") and not np.array_equal(np.asarray(first.reference),
                                                                             np.asarray(other.reference))
    assert list((editor.cache_dir / "anchors").glob("eg3d-*-seed0-psi0.7.png"))  # rendered once, kept on disk


def test_text_edit_runs_instruct_pix2pix_once_per_instruction(editor, astronaut_photo, monkeypatch):
    text = editor.text_reference
    calls = []
    original = text.editor.edit
    monkeypatch.setattr(text.editor, "edit", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    cached_before = set(editor.cache_dir.glob("*.png"))
    first = editor(astronaut_photo, prompt="make it a bronze statue", settings=FAST_TEXT, seed=3)
    second = editor(astronaut_photo, prompt="make it a bronze statue", settings=FAST_TEXT, seed=3)
    assert calls == ["make it a bronze statue"]
    assert len(set(editor.cache_dir.glob("*.png")) - cached_before) == 1  # persisted for the next process
    assert first.edited_2d.size == (512, 512)
    assert torch.equal(first.planes, second.planes)
    own = editor(astronaut_photo, prompt="make it a bronze statue", settings=FAST_TEXT, use_own_photo=True)
    assert len(calls) == 2 and own.edited_2d is not None


def test_bad_requests_have_clear_errors(editor, astronaut_photo, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        editor(astronaut_photo)
    with pytest.raises(ValueError, match="exactly one"):
        editor(astronaut_photo, reference=astronaut_photo, prompt="x")
    with pytest.raises(PromptError):
        editor(astronaut_photo, prompt="   ", settings=FAST_TEXT)
    with pytest.raises(PromptError, match="unknown anchor 99"):
        editor(astronaut_photo, prompt="make it snowy", settings=FAST_TEXT, anchor=99)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(blank)
    with pytest.raises(NoFaceError, match="frontal"):
        editor(blank, reference=astronaut_photo)


def test_missing_and_mismatched_weights(tmp_path, tiny_weights):
    with pytest.raises(MissingWeightsError, match="3dpe.pt") as missing:
        PortraitEditor.from_pretrained(tmp_path)
    assert "Google Drive" in str(missing.value)
    # A released-style 3dpe.pt of another architecture: a concise strict-loading error.
    from threedpe.weights.checkpoints import load_3dpe

    tiny = load_3dpe(tiny_weights / "3dpe.safetensors")
    torch.save({"encoder_state_dict": tiny.encoder_state_dict, "renderer_state_dict": tiny.renderer_state_dict},
               tmp_path / "3dpe.pt")
    with pytest.raises(CheckpointError, match="do not fit the model"):
        PortraitEditor.from_pretrained(tmp_path)


def test_from_pretrained_with_a_hub_repo_id(tiny_weights, tmp_path, monkeypatch):
    """``from_pretrained("owner/name")`` fetches the converted editor files at the pinned revision."""
    import huggingface_hub

    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    calls = []

    def fake_download(repo_id, filename, subfolder=None, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        target = snapshot / filename
        target.write_bytes((tiny_weights / filename).read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.chdir(tmp_path)  # no local checkpoints/ folder here
    editor = PortraitEditor.from_pretrained("someone/threedpe-weights", revision=revision, cache_dir=tmp_path)
    assert editor.untrained
    assert calls == [("someone/threedpe-weights", "3dpe.safetensors", revision),
                     ("someone/threedpe-weights", "3dpe.json", revision)]


def test_strip_view_and_depth_share_their_renders(editor, astronaut_photo, monkeypatch):
    result = editor(astronaut_photo, reference=astronaut_photo)
    calls = []
    render = editor.model.render
    monkeypatch.setattr(editor.model, "render", lambda *a, **k: calls.append(1) or render(*a, **k))
    strip, front, _ = result.strip(), result.view(), result.depth()
    assert len(calls) == 3  # the frontal view of the strip serves the view and the depth image
    assert np.array_equal(np.asarray(strip)[:, 128:256], np.asarray(front))
    result.view(12, 0)
    assert len(calls) == 4
