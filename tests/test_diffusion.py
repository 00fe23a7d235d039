"""Text route: InstructPix2Pix editor (tiny random model, CPU), prompt checks, reference cache, anchors."""
from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threedpe.anchors import ANCHOR_DIR, Anchor, shipped_anchors
from threedpe.cancel import Cancelled
from threedpe.diffusion import InstructPix2PixEditor, PromptError, ReferenceCache, TextReference
from threedpe.edit_settings import EditSettings
from threedpe.tiny import build_tiny_instruct_pix2pix

FAST = EditSettings(steps=2, resolution=64)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and on a shared 2-core machine they make it ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny_ip2p"))


@pytest.fixture(scope="session")
def editor(tiny_folder: Path) -> InstructPix2PixEditor:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # a local folder must load without the network
        loaded = InstructPix2PixEditor.from_pretrained(tiny_folder, device="cpu")
    loaded.pipeline.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="session")
def anchors() -> list[Image.Image]:
    return [anchor.image().resize((64, 64), Image.LANCZOS) for anchor in shipped_anchors()]


def as_anchors(images: list[Image.Image]) -> list[Anchor]:
    return [Anchor.from_image(f"anchor{index}", image) for index, image in enumerate(images)]


class CountingEditor:
    """Wraps an editor and counts its `edit` calls."""

    def __init__(self, inner: InstructPix2PixEditor) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    def edit(self, images, instruction, settings, seed, cancel=None):
        self.calls += 1
        return self.inner.edit(images, instruction, settings, seed, cancel)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_tiny_folder_has_diffusers_layout_and_is_labelled(tiny_folder: Path) -> None:
    for name in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_folder / name).exists(), name
    assert (tiny_folder / "tokenizer" / "tokenizer.json").is_file()
    assert "UNTRAINED" in (tiny_folder / "README.txt").read_text()
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert index["safety_checker"] == [None, None]


def test_loaded_editor_uses_euler_ancestral_fp32_on_cpu(editor: InstructPix2PixEditor) -> None:
    assert type(editor.pipeline.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert editor.device.type == "cpu"
    assert editor.pipeline.unet.dtype == torch.float32
    assert editor.identity.startswith("local:") and editor.identity.endswith("|float32")
    assert editor.pipeline.safety_checker is None


def test_same_seed_same_output_other_seed_differs(editor, anchors) -> None:
    first = editor.edit([anchors[0]], "make it a bronze statue", FAST, seed=3)[0]
    again = editor.edit([anchors[0]], "make it a bronze statue", FAST, seed=3)[0]
    other = editor.edit([anchors[0]], "make it a bronze statue", FAST, seed=4)[0]
    assert first.size == (64, 64) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_edit_resizes_to_the_settings_resolution_and_rejects_non_square(editor, anchors) -> None:
    big = anchors[0].resize((128, 128))
    assert editor.edit([big], "make it golden", FAST, seed=0)[0].size == (64, 64)
    with pytest.raises(ValueError, match="square"):
        editor.edit([big.crop((0, 0, 128, 96))], "make it golden", FAST, seed=0)


@pytest.mark.parametrize("instruction", ["", "   \n\t "])
def test_empty_instruction_is_a_prompt_error(editor, anchors, instruction: str) -> None:
    counting = CountingEditor(editor)
    with pytest.raises(PromptError, match="instruction is empty"):
        TextReference(counting, as_anchors(anchors)).reference(instruction, FAST)
    with pytest.raises(PromptError, match="instruction is empty"):
        editor.edit([anchors[0]], instruction, FAST, seed=0)
    assert counting.calls == 0


def test_too_long_instruction_names_its_length_and_the_limit(editor, anchors) -> None:
    assert editor.max_tokens == 77
    assert editor.count_tokens("it " * 75) == 77  # 75 words + start + end tokens
    assert editor.check_instruction("it " * 75) == " ".join(["it"] * 75)
    with pytest.raises(PromptError, match=r"78 CLIP tokens .* limit is 77"):
        editor.check_instruction("it " * 76)
    with pytest.raises(PromptError, match=r"92 CLIP tokens .* limit is 77"):
        TextReference(editor, as_anchors(anchors)).reference("make it golden " * 30, FAST)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="image_guidance must be >= 1"):
        EditSettings(image_guidance=0.9)
    with pytest.raises(ValueError, match="text_guidance must be > 1"):
        EditSettings(text_guidance=1.0)
    with pytest.raises(ValueError, match="multiple of 64"):
        EditSettings(resolution=100)
    with pytest.raises(ValueError, match="steps"):
        EditSettings(steps=0)
    assert EditSettings(image_guidance=1.0).image_guidance == 1.0


def test_cancel_raises_and_nothing_is_cached(editor, anchors, tmp_path: Path) -> None:
    checks = itertools.count()
    with pytest.raises(Cancelled, match="after denoising step 1 of 2"):
        editor.edit([anchors[0]], "make it golden", FAST, seed=0, cancel=lambda: next(checks) >= 1)
    stop = threading.Event()
    stop.set()
    counting = CountingEditor(editor)
    route = TextReference(counting, as_anchors(anchors), cache_dir=tmp_path)
    with pytest.raises(Cancelled, match="before the 2D edit started"):
        route.reference("make it golden", FAST, cancel=stop)
    assert route.reference("make it golden", FAST).source == "editor"
    assert counting.calls == 2


def test_repeated_instruction_calls_the_editor_once(editor, anchors) -> None:
    counting = CountingEditor(editor)
    route = TextReference(counting, as_anchors(anchors))
    first = route.reference("make it a marble statue", FAST, anchor=0, seed=0)
    second = route.reference("  make it   a marble statue ", FAST, anchor=0, seed=0)
    assert (first.source, second.source) == ("editor", "memory")
    assert counting.calls == 1
    assert np.array_equal(pixels(first.image), pixels(second.image))
    assert route.stats.misses == 1 and route.stats.memory_hits == 1

    route.reference("make it a marble statue", EditSettings(steps=3, resolution=64))
    route.reference("make it a marble statue", FAST, seed=1)
    route.reference("make it a marble statue", FAST, anchor=1)
    route.reference("make it a bronze statue", FAST)
    assert counting.calls == 5 and route.stats.misses == 5
    with pytest.raises(PromptError, match="unknown anchor 2: choose one of anchor0, anchor1"):
        route.reference("make it a marble statue", FAST, anchor=2)


def test_cached_reference_matches_a_direct_edit(editor, anchors) -> None:
    result = TextReference(editor, as_anchors(anchors)).reference("make it golden", FAST, anchor=1, seed=7)
    direct = editor.edit([anchors[1]], "make it golden", FAST, seed=7)[0]
    assert np.array_equal(pixels(result.image), pixels(direct))


def test_disk_cache_survives_a_new_text_reference(editor, anchors, tmp_path: Path) -> None:
    route = TextReference(CountingEditor(editor), as_anchors(anchors), cache_dir=tmp_path)
    first = route.reference("make it golden", FAST)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".png"]
    metadata = json.loads((tmp_path / f"{first.key}.json").read_text())
    assert metadata["instruction"] == "make it golden" and metadata["model"] == editor.identity

    counting = CountingEditor(editor)
    fresh = TextReference(counting, as_anchors(anchors), cache_dir=tmp_path)
    again = fresh.reference("make it golden", FAST)
    assert again.source == "disk" and counting.calls == 0 and fresh.stats.disk_hits == 1
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert fresh.reference("make it golden", FAST).source == "memory"


def test_own_photo_route_is_not_cached(editor, anchors) -> None:
    counting = CountingEditor(editor)
    route = TextReference(counting, as_anchors(anchors))
    photo = anchors[1].transpose(Image.Transpose.ROTATE_90)
    first = route.edit_photo(photo, " make it golden ", FAST, seed=2)
    second = route.edit_photo(photo, "make it golden", FAST, seed=2)
    assert counting.calls == 2 and first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(second))


def solid(value: int, side: int = 32) -> Image.Image:
    rng = np.random.default_rng(value)  # noise, so PNG sizes are similar and not tiny
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_disk_cache_is_bounded_and_evicts_least_recently_used(tmp_path: Path) -> None:
    probe = ReferenceCache(tmp_path / "probe")
    probe.put("probe", solid(0), {})
    entry_bytes = probe.disk_bytes()

    cache = ReferenceCache(tmp_path / "cache", max_bytes=int(2.5 * entry_bytes), max_items=1)
    cache.put("a", solid(1), {})
    cache.put("b", solid(2), {})
    assert cache.get("a")[1] == "disk"  # max_items=1 keeps only "b" in memory; reading "a" marks it recently used
    cache.put("c", solid(3), {})
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["a.json", "a.png", "c.json", "c.png"]  # "b" was the least recently used
    assert cache.disk_bytes() <= cache.max_bytes

    reopened = ReferenceCache(tmp_path / "cache")
    assert reopened.get("b") is None
    image, source = reopened.get("a")
    assert source == "disk" and np.array_equal(pixels(image), pixels(solid(1)))


def test_memory_cache_returns_copies(tmp_path: Path) -> None:
    cache = ReferenceCache(max_items=2)
    cache.put("a", solid(1), {})
    image, source = cache.get("a")
    image.paste((0, 0, 0), (0, 0, 32, 32))
    assert source == "memory" and np.array_equal(pixels(cache.get("a")[0]), pixels(solid(1)))


def test_shipped_anchors_are_documented_public_domain_crops() -> None:
    anchors = [anchor.image() for anchor in shipped_anchors()]
    assert len(anchors) >= 2
    assert all(anchor.size == (512, 512) and anchor.mode == "RGB" for anchor in anchors)
    sources = (ANCHOR_DIR / "SOURCES.md").read_text()
    for path in ANCHOR_DIR.glob("*.png"):
        assert f"`{path.name}`" in sources, f"{path.name} has no entry in SOURCES.md"
    assert "public domain" in sources
    with pytest.raises(FileNotFoundError, match="no anchor portraits"):
        shipped_anchors(ANCHOR_DIR / "missing")
