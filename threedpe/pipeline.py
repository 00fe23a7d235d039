"""``PortraitEditor``: the whole product in one call, in the style of a diffusers pipeline.

photo --alignment--> 512^2 EG3D crop --editor (+ reference image, or a text instruction turned into a
reference by InstructPix2Pix)--> tri-planes --renderer--> any view, the 3-view strip, an orbit video,
a depth image, a mesh.

    editor = PortraitEditor.from_pretrained("checkpoints").to("cuda")
    result = editor("me.jpg", prompt="Make him resemble a young child")
    result.strip().save("strip.png"); result.video("orbit.mp4"); result.mesh("head.glb")
"""
from __future__ import annotations

import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from threedpe import cameras
from threedpe.alignment import AlignedFace, align_face, prepare_reference
from threedpe.checkpoints import MissingWeightsError, load_3dpe, resolve_first, resolve_weight
from threedpe.diffusion import (INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION, CancelSignal, EditSettings,
                                InstructPix2PixEditor, PromptError, TextReference, default_anchors)
from threedpe.editor import EditorModel
from threedpe.encoder import preprocess_input, preprocess_reference
from threedpe.images import ImageInput, load_image
from threedpe.mesh import export_mesh, extract_mesh
from threedpe.video import ORBIT_FPS, render_orbit, to_uint8, triplane_view, write_mp4

EDITOR_WEIGHTS = ("3dpe.safetensors", "3dpe.pt")  # converted first, then the released file
TEXT_MODEL_FOLDER = "instruct-pix2pix"
HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
RENDER_CACHE_SIZE = 4  # rendered views an EditResult keeps
UNTRAINED_NOTE = "UNTRAINED random weights: outputs are noise, for trying the app and the API only."


@dataclass
class EditResult:
    """An edited 3D portrait: tri-planes that render on demand, plus what produced them.

    ``planes`` (1, 96, P, P) float32 on the editor's device; ``image`` the 512^2 (aligned) input;
    ``reference`` the reference image the editor saw; ``edited_2d`` the InstructPix2Pix output of a text
    edit (else None); ``timings`` seconds per stage ('align', 'reference', 'encode').
    """

    planes: torch.Tensor
    image: Image.Image
    reference: Image.Image
    editor: PortraitEditor
    alignment: AlignedFace | None = None
    edited_2d: Image.Image | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    _renders: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (yaw, pitch) -> outputs

    def _render(self, yaw: float, pitch: float) -> dict[str, torch.Tensor]:
        """Renderer outputs (batch of 1) from (yaw, pitch). Rendering is deterministic, so the last few views
        are kept: the strip, the frontal view and the depth image of an edit share their renders."""
        key = (float(yaw), float(pitch))
        if key not in self._renders:
            cams = cameras.camera(*key).to(self.planes.device)
            with torch.inference_mode():
                out = self.editor.model.render(self.planes, cams, deterministic=True)
            self._renders[key] = {k: out[k] for k in ("image", "image_depth", "weight_total")}
            if len(self._renders) > RENDER_CACHE_SIZE:
                self._renders.popitem(last=False)
        self._renders.move_to_end(key)
        return self._renders[key]

    def view(self, yaw: float = math.pi / 2, pitch: float = math.pi / 2) -> Image.Image:
        """The portrait from (yaw, pitch) in radians (frontal = pi/2, pi/2), as an RGB image."""
        return Image.fromarray(to_uint8(self._render(yaw, pitch)["image"][0]))

    def views(self, views: list[tuple[float, float]]) -> list[Image.Image]:
        """Several (yaw, pitch) views, rendered one at a time to bound memory."""
        return [self.view(yaw, pitch) for yaw, pitch in views]

    def strip(self, spread: float = math.pi / 6) -> Image.Image:
        """The official 3-view strip (yaw pi/2 - spread, pi/2, pi/2 + spread) side by side."""
        images = self.views(cameras.three_views(spread))
        w, h = images[0].size
        strip = Image.new("RGB", (w * len(images), h))
        for i, image in enumerate(images):
            strip.paste(image, (i * w, 0))
        return strip

    def depth(self, yaw: float = math.pi / 2, pitch: float = math.pi / 2) -> Image.Image:
        """Depth from (yaw, pitch) as a grayscale image at the output size: near = bright, empty space = black."""
        out = self._render(yaw, pitch)
        depth, opacity = out["image_depth"][0, 0], out["weight_total"][0, 0]
        solid = opacity > 0.5
        if solid.any():
            near, far = depth[solid].min(), depth[solid].max()
            shade = ((far - depth) / (far - near).clamp_min(1e-6)).clamp(0, 1) * 0.85 + 0.15
            shade = torch.where(solid, shade, torch.zeros_like(shade))
        else:
            shade = torch.zeros_like(depth)
        size = out["image"].shape[-1]
        shade = F.interpolate(shade[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        return Image.fromarray((shade * 255).round().byte().cpu().numpy(), mode="L")

    def video(self, path: str | os.PathLike, num_frames: int = 120, fps: float = ORBIT_FPS / 2, batch: int = 1,
              cancel: Callable[[], bool] | None = None) -> Path:
        """Orbit video (H.264 mp4) along the official camera path; deterministic frames (no flicker)."""
        render_view = triplane_view(self.editor.model.renderer, self.planes, deterministic=True)
        return write_mp4(render_orbit(render_view, num_frames, batch=batch, cancel=cancel), path, fps=fps)

    def mesh(self, *paths: str | os.PathLike, resolution: int = 256, level: float = 10.0) -> list[Path]:
        """Coloured mesh of the density surface sigma = ``level`` on a ``resolution``^3 grid, extracted once
        and written to every path (.glb, .ply or .obj by suffix)."""
        model = self.editor.model
        mesh = extract_mesh(self.planes, model.renderer.decoder, resolution=resolution, level=level,
                            box_warp=model.config.rendering.box_warp)
        return [export_mesh(mesh, path) for path in paths]


def default_cache_dir() -> Path:
    """Where text references are cached on disk: ``$THREEDPE_CACHE`` or ``~/.cache/threedpe/references``."""
    return Path(os.environ.get("THREEDPE_CACHE", Path.home() / ".cache" / "threedpe" / "references")).expanduser()


class PortraitEditor:
    """Real-time 3D-aware portrait editing (3DPE): ``editor(photo, reference=...)`` or ``editor(photo, prompt=...)``."""

    def __init__(self, model: EditorModel, text_model: str | os.PathLike | None = None,
                 text_revision: str | None = INSTRUCT_PIX2PIX_REVISION, cache_dir: str | os.PathLike | None = None):
        self.model = model.eval()
        self.text_model = text_model or INSTRUCT_PIX2PIX_REPO
        self.text_revision = text_revision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._text: TextReference | None = None

    @property
    def untrained(self) -> bool:
        return self.model.config.untrained

    @property
    def device(self) -> torch.device:
        return self.model.renderer.const.device

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | None = None, *, repo_id: str | None = None,
                        revision: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, cache_dir: str | os.PathLike | None = None) -> PortraitEditor:
        """Load from a weight folder (default ``$THREEDPE_WEIGHTS`` or ``checkpoints/``), else the Hub.

        ``source`` is a folder or a Hub repository id (``owner/name``; the same as ``repo_id=``), read at
        ``revision`` (a commit sha, or ``$THREEDPE_HUB_REVISION``). The folder holds ``3dpe.safetensors`` + ``3dpe.json`` (converted) or the released ``3dpe.pt``,
        and optionally ``instruct-pix2pix/`` (diffusers layout; otherwise ``timbrooks/instruct-pix2pix``
        is loaded from the Hub on the first text edit). Text references are cached in memory and in
        ``cache_dir`` (default :func:`default_cache_dir`). Raises ``MissingWeightsError`` naming what is missing.
        """
        if source is not None and not Path(source).expanduser().exists() and HUB_REPO_ID.fullmatch(str(source)):
            source, repo_id = None, str(source)
        folder = Path(source if source is not None else os.environ.get("THREEDPE_WEIGHTS", "checkpoints")).expanduser()
        try:
            weights = resolve_first(EDITOR_WEIGHTS, local_dir=folder, repo_id=repo_id, revision=revision)
        except MissingWeightsError as missing:
            raise MissingWeightsError(f"no 3DPE editor weights (3dpe.pt, or its converted 3dpe.safetensors + "
                                      f"3dpe.json) in {folder.resolve()}: {missing}") from None
        if weights.suffix == ".safetensors":  # its config must sit beside it (the Hub keeps a snapshot together)
            resolve_weight(weights.with_suffix(".json").name, local_dir=folder, repo_id=repo_id, revision=revision)
        model = EditorModel.from_checkpoint(load_3dpe(weights))
        local_text = folder / TEXT_MODEL_FOLDER
        text_model = local_text if (local_text / "model_index.json").is_file() else None
        editor = cls(model, text_model=text_model, text_revision=None if text_model else INSTRUCT_PIX2PIX_REVISION,
                     cache_dir=cache_dir)
        return editor.to(device, dtype)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PortraitEditor:
        """Move to ``device``; ``dtype`` applies to the encoder (the renderer stays float32 for accuracy)."""
        if device is not None:
            self.model.to(device)
        if dtype is not None:
            self.model.encoder.to(dtype)
        if self._text is not None and device is not None:
            self._text.editor.to(device)
        return self

    @property
    def text_reference(self) -> TextReference:
        """The InstructPix2Pix text route (loaded on first use: the model is large)."""
        if self._text is None:
            editor = InstructPix2PixEditor.from_pretrained(self.text_model, revision=self.text_revision,
                                                           device=self.device)
            self._text = TextReference(editor, default_anchors(), cache_dir=self.cache_dir)
        return self._text

    def align(self, image: ImageInput, aligned: bool = False) -> tuple[Image.Image, AlignedFace | None]:
        """The editor's input crop: detected + EG3D-aligned, or (``aligned=True``) the photo resized as it is."""
        if aligned:
            size = self.model.config.encoder.image_size
            return load_image(image).resize((size, size), Image.BICUBIC), None
        face = align_face(image)
        return face.image, face

    def __call__(self, image: ImageInput, reference: ImageInput | None = None, prompt: str | None = None, *,
                 aligned: bool = False, align_reference: bool = True, use_own_photo: bool = False,
                 settings: EditSettings | None = None, seed: int = 0, anchor: int = 0,
                 cancel: CancelSignal | None = None) -> EditResult:
        """Edit a portrait with a reference image or a text instruction (exactly one of them).

        image: a photo (path, bytes, array or PIL); it is aligned unless ``aligned=True``.
        reference: an image whose style is applied; aligned like the photo when it shows a face.
        prompt: an InstructPix2Pix instruction, applied to an anchor portrait (cached; ``anchor`` picks it)
        or, with ``use_own_photo=True``, to the aligned photo itself (slower, not cached).
        """
        if (reference is None) == (prompt is None):
            raise ValueError("give either a reference image or a text instruction (exactly one)")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        crop, face = self.align(image, aligned)
        timings["align"] = time.perf_counter() - start

        start = time.perf_counter()
        edited_2d = None
        if prompt is not None:
            settings = settings or EditSettings()
            if use_own_photo:
                edited_2d = self.text_reference.edit_photo(crop, prompt, settings, seed=seed, cancel=cancel)
            else:
                if not 0 <= anchor < len(self.text_reference.anchors):
                    raise PromptError(f"anchor {anchor} does not exist (there are {len(self.text_reference.anchors)})")
                edited_2d = self.text_reference.reference(prompt, settings, anchor, seed, cancel=cancel).image
            ref_image = edited_2d
        else:
            ref_image = prepare_reference(reference) if align_reference else load_image(reference)
        timings["reference"] = time.perf_counter() - start

        start = time.perf_counter()
        x = preprocess_input(crop, self.model.config.encoder.image_size).to(self.device)
        ref = preprocess_reference(ref_image).to(self.device)
        with torch.inference_mode():
            planes = self.model.encode(x, ref)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        timings["encode"] = time.perf_counter() - start
        warnings = list(face.warnings) if face is not None else []
        if self.untrained:
            warnings.append(UNTRAINED_NOTE)
        return EditResult(planes=planes, image=crop, reference=ref_image, editor=self, alignment=face,
                          edited_2d=edited_2d, timings=timings, warnings=warnings)
