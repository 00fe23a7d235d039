"""``PortraitEditor``: the whole product in one call, in the style of a diffusers pipeline.

photo --alignment--> 512^2 EG3D crop --editor (+ reference image, or a text instruction turned into a
reference by InstructPix2Pix)--> tri-planes --renderer--> any view, the 3-view strip, an orbit video,
a depth image, a mesh. Views are given in degrees from the frontal view (see :mod:`threedpe.cameras`).

    editor = PortraitEditor.from_pretrained("checkpoints").to("cuda" if torch.cuda.is_available() else "cpu")
    result = editor("me.jpg", prompt="Make him resemble a young child")
    result.strip().save("strip.png"); result.video("orbit.mp4"); result.mesh("head.glb")

A style made by customisation (:mod:`threedpe.training.customize`) is applied per call and removed afterwards:
``editor(photo, reference=..., style=editor.load_style("gold.safetensors"))``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threedpe import cameras
from threedpe.alignment import (AlignConfig, AlignedFace, NoFaceError, align_face,
                                align_reference as align_reference_photo)
from threedpe.anchors import Anchor, eg3d_anchors, shipped_anchors
from threedpe.cancel import CancelSignal, Cancelled, check
from threedpe.devices import DeviceError, resolve_device
from threedpe.diffusion import InstructPix2PixEditor, PromptError, TextReference
from threedpe.edit_settings import EditSettings, SettingsError
from threedpe.images import ImageError, ImageInput, frames_note, load_image
from threedpe.mesh import export_mesh, extract_mesh
from threedpe.models.editor import EditorModel, ReconstructionModel, resolve_reconstruction_weights
from threedpe.models.encoder import preprocess_input, preprocess_reference
from threedpe.precision import PrecisionError, check_precision
from threedpe.styles import Style, StyleError, applied, model_fingerprint
from threedpe.video import ORBIT_FPS, render_orbit, to_uint8, triplane_view, write_mp4
from threedpe.weights import (EDITOR_WEIGHTS, INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION, RECONSTRUCTION_WEIGHTS,
                              CheckpointError, MissingWeightsError, default_folder, local_eg3d_weights, resolve_first,
                              resolve_weight, text_model_source)
from threedpe.weights.checkpoints import load_3dpe

HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
RENDER_CACHE_SIZE = 4  # rendered views an EditResult keeps
MIN_REFERENCE_SIDE = 64
UNTRAINED_NOTE = "UNTRAINED random weights: outputs are noise, for trying the app and the API only."
STRENGTH_RANGE = (0.0, 1.5)  # 0: the unedited 3D reconstruction of the photo, 1: the edit, above 1: extrapolated


# Errors a user can act on (their messages say what to do); the app and the CLI show them without a traceback.
USER_ERRORS = (ImageError, NoFaceError, CheckpointError, PromptError, SettingsError, DeviceError, StyleError,
               PrecisionError, Cancelled)


def reference_notes(image: Image.Image) -> list[str]:
    """Warnings about a reference image that will make a poor style prompt: tiny, uniform or noise-like."""
    notes = []
    if min(image.size) < MIN_REFERENCE_SIDE:
        notes.append(f"The reference is only {image.width}×{image.height} pixels; it is enlarged to 224×224 for the "
                     "editor, so its style will be mostly blur. A reference of 256 pixels or more works better.")
    gray = image.convert("L")
    full = float(np.asarray(gray, dtype=np.float32).std())
    coarse = float(np.asarray(gray.resize((16, 16), Image.Resampling.BOX), dtype=np.float32).std())
    if full < 3.0:
        notes.append("The reference is nearly uniform (no visible structure); the edit will have little to copy.")
    elif coarse < 0.2 * full:
        notes.append("The reference looks like noise (no large-scale structure); a portrait in the target style "
                     "works best.")
    return notes


def blend_strength(unedited: torch.Tensor, edited: torch.Tensor, strength: float) -> torch.Tensor:
    """Tri-planes at edit ``strength``: ``unedited`` at 0 and ``edited`` at 1 (each exactly, no arithmetic), linear
    between and beyond."""
    if strength == 1.0:
        return edited
    with torch.inference_mode():
        return unedited if strength == 0.0 else torch.lerp(unedited, edited, strength)


def check_strength(strength: float) -> float:
    """``strength`` as a float, or a ``SettingsError`` when it lies outside :data:`STRENGTH_RANGE`."""
    low, high = STRENGTH_RANGE
    if not isinstance(strength, (int, float)) or not math.isfinite(strength) or not low <= strength <= high:
        raise SettingsError(f"the edit strength must be a number from {low:g} (the unedited photo in 3D) to {high:g} "
                            f"(1 = the edit, above 1 exaggerates it), got {strength!r}")
    return float(strength)


@dataclass
class Unedited:
    """The unedited reconstruction of an edit's photo, shared by every strength of that edit: the editor's E_low /
    E_high features of the photo (kept from the edit's encode) until the tri-planes are made from them, once."""

    branches: tuple[torch.Tensor, torch.Tensor] | None
    planes: torch.Tensor | None = None


@dataclass
class EditResult:
    """An edited 3D portrait: tri-planes that render on demand, plus what produced them.

    ``planes`` (1, 96, P, P) float32 on the editor's device; ``image`` the 512^2 (aligned) input;
    ``reference`` the reference image the editor saw; ``edited_2d`` the InstructPix2Pix output of a text
    edit (else None); ``anchor`` the label of the anchor portrait a text instruction was applied to (None for a
    reference edit or the own-photo route); ``timings`` seconds per stage: 'align', 'reference' and 'encode' from the
    edit, then 'render' (every view rendered so far: strip, views, view, depth, summed), 'video' and 'mesh' (the
    latest of each) as they are made; ``warnings`` notes for the user. Views take degrees from the frontal view: positive ``yaw`` moves the camera to
    the right of the frontal image, positive ``pitch`` moves it down. ``strength``: how strongly ``planes`` carry the
    edit (see :meth:`with_strength`); ``edited_planes`` the tri-planes at strength 1 (None: ``planes`` are).
    """

    planes: torch.Tensor
    image: Image.Image
    reference: Image.Image
    editor: PortraitEditor
    alignment: AlignedFace | None = None
    edited_2d: Image.Image | None = None
    anchor: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    strength: float = 1.0
    edited_planes: torch.Tensor | None = field(default=None, repr=False)

    _renders: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (yaw, pitch, preview) -> outputs
    unedited: Unedited | None = field(default=None, repr=False)

    @property
    def strength_available(self) -> bool:
        """Whether :meth:`with_strength` can go below or above 1 (the Live3D file is in the weight folder); see
        :attr:`PortraitEditor.strength_unavailable` for why not."""
        return self.editor.strength_unavailable is None

    def with_strength(self, strength: float) -> EditResult:
        """This edit at another ``strength`` in :data:`STRENGTH_RANGE` without encoding anything again: the tri-planes
        are ``lerp(unedited, edited, strength)`` (see :attr:`unedited_planes`), the views are rendered anew. Strength 1
        returns the edit's own tri-planes (bit-identical). ``MissingWeightsError`` without the Live3D file."""
        strength = check_strength(strength)
        edited = self.planes if self.edited_planes is None else self.edited_planes
        planes = edited if strength == 1.0 else blend_strength(self.unedited_planes, edited, strength)
        timings = {stage: seconds for stage, seconds in self.timings.items() if stage not in ("render", "video", "mesh")}
        return dataclasses.replace(self, planes=planes, strength=strength, edited_planes=edited, timings=timings,
                                   warnings=list(self.warnings), _renders=OrderedDict())

    @property
    def unedited_planes(self) -> torch.Tensor:
        """The unedited 3D reconstruction of the photo (1, 96, P, P): Live3D's ``Final_encoder`` on the E_low / E_high
        features the edit's encode computed (the networks share them), made once per edit and kept."""
        if self.unedited is None:
            self.unedited = Unedited(None)
        if self.unedited.planes is None:
            self.unedited.planes = self.editor.reconstruct(self.image, self.unedited.branches)
            self.unedited.branches = None  # no longer needed: free them
        return self.unedited.planes

    @property
    def execution(self) -> str:
        """How this result's views, videos and meshes are computed, in words (for a timings panel), e.g.
        ``"cpu fp32, channels-last token grids, fused volume rendering, folded channels-last SR"``."""
        return self.editor.model.describe_inference()

    def _render(self, yaw: float, pitch: float, preview: bool = False) -> dict[str, torch.Tensor]:
        """Renderer outputs (batch of 1) from (yaw, pitch) in degrees (see :meth:`view` for ``preview``)."""
        return self._render_many([(yaw, pitch)], preview)[0]

    def _render_many(self, views: list[tuple[float, float]], preview: bool = False,
                     cancel: CancelSignal | None = None) -> list[dict[str, torch.Tensor]]:
        """Renderer outputs (batch of 1 each) of (yaw, pitch) views in degrees. Rendering is deterministic, so the last
        few renders are kept: the strip, the frontal view and the depth image of an edit share them. Views not kept
        are rendered together on CUDA (one batch sharing the tri-plane and one decoder pass) and one at a time on the
        CPU (where batching gains nothing measurable and costs memory)."""
        start_time = time.perf_counter()
        keys = [(float(yaw), float(pitch), bool(preview)) for yaw, pitch in views]
        missing = list(dict.fromkeys(key for key in keys if key not in self._renders))
        batch = len(missing) if self.planes.device.type == "cuda" else 1
        for start in range(0, len(missing), max(1, batch)):
            check(cancel, f"after {start} of {len(missing)} views")
            chunk = missing[start:start + batch]
            yaw, pitch = zip(*(cameras.from_degrees(yaw, pitch) for yaw, pitch, _ in chunk))
            cams = cameras.camera(torch.tensor(yaw), torch.tensor(pitch)).to(self.planes.device)
            with torch.inference_mode():
                out = self.editor.model.render(self.planes, cams, preview=preview)
            for i, key in enumerate(chunk):
                self._renders[key] = {k: out[k][i:i + 1] for k in ("image", "image_depth", "weight_total")}
        if missing and self.planes.device.type == "cuda":
            torch.cuda.synchronize()
        self._timed("render", start_time, add=True)
        renders = []
        for key in keys:
            self._renders.move_to_end(key)
            renders.append(self._renders[key])
        while len(self._renders) > max(RENDER_CACHE_SIZE, len(set(keys))):
            self._renders.popitem(last=False)
        return renders

    def view(self, yaw: float = 0.0, pitch: float = 0.0, preview: bool = False) -> Image.Image:
        """The portrait from (yaw, pitch) in degrees from the frontal view, as an RGB image.

        ``preview=True``: a draft for interaction (slider drags, a first look on the CPU): neural rendering at
        64^2 with 24 + 24 samples per ray and super-resolution at that scale, upscaled to the full size (see
        :data:`threedpe.models.rendering.PREVIEW_RESOLUTION`); several times faster than the full render, blurrier."""
        return Image.fromarray(to_uint8(self._render(yaw, pitch, preview)["image"][0]))

    def views(self, views: list[tuple[float, float]], cancel: CancelSignal | None = None,
              preview: bool = False) -> list[Image.Image]:
        """Several (yaw, pitch) views in degrees (``preview`` as in :meth:`view`)."""
        return [Image.fromarray(to_uint8(out["image"][0])) for out in self._render_many(views, preview, cancel)]

    def strip(self, spread: float = 30.0, cancel: CancelSignal | None = None, preview: bool = False) -> Image.Image:
        """The official 3-view strip: yaw -spread, 0, +spread degrees at pitch 0, side by side."""
        images = self.views([(-spread, 0.0), (0.0, 0.0), (spread, 0.0)], cancel, preview)
        w, h = images[0].size
        strip = Image.new("RGB", (w * len(images), h))
        for i, image in enumerate(images):
            strip.paste(image, (i * w, 0))
        return strip

    def depth(self, yaw: float = 0.0, pitch: float = 0.0, preview: bool = False) -> Image.Image:
        """Depth from (yaw, pitch) in degrees as a grayscale image at the output size: near = bright, empty = black."""
        out = self._render(yaw, pitch, preview)
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
              cancel: CancelSignal | None = None, preview: bool = False) -> Path:
        """Orbit video (H.264 mp4) along the official camera path; deterministic frames (no flicker). ``batch`` frames
        share one render call (worth it on CUDA); ``preview`` renders draft frames (see :meth:`view`)."""
        start = time.perf_counter()
        render_view = triplane_view(self.editor.model.renderer, self.planes, preview=preview)
        written = write_mp4(render_orbit(render_view, num_frames, batch=batch, cancel=cancel), path, fps=fps)
        self._timed("video", start)
        return written

    def mesh(self, *paths: str | os.PathLike, resolution: int | None = None, level: float = 10.0,
             cancel: CancelSignal | None = None) -> list[Path]:
        """Coloured mesh of the density surface sigma = ``level`` on a ``resolution``^3 grid (default: as fine as the
        tri-planes, 256 for the released weights), extracted once and written to every path (.glb, .ply or .obj by
        suffix)."""
        start = time.perf_counter()
        model = self.editor.model
        mesh = extract_mesh(self.planes, model.renderer.decoder, resolution=resolution or self.planes.shape[-1],
                            level=level, box_warp=model.config.rendering.box_warp, cancel=cancel)
        written = [export_mesh(mesh, path) for path in paths]
        self._timed("mesh", start)
        return written

    def _timed(self, stage: str, start: float, add: bool = False) -> None:
        """Record the seconds since ``start`` (``time.perf_counter``) as ``timings[stage]``, or add them to it."""
        self.timings[stage] = (self.timings.get(stage, 0.0) if add else 0.0) + time.perf_counter() - start


def default_cache_dir() -> Path:
    """Where text references (and rendered anchors, in ``anchors/``) are cached on disk: ``$THREEDPE_CACHE`` or
    ``~/.cache/threedpe/references``."""
    return Path(os.environ.get("THREEDPE_CACHE", Path.home() / ".cache" / "threedpe" / "references")).expanduser()


class PortraitEditor:
    """Real-time 3D-aware portrait editing (3DPE): ``editor(photo, reference=...)`` or ``editor(photo, prompt=...)``.

    Loads on the CPU in float32 (diffusers' convention); move it with :meth:`to`. ``weights_folder``: the local folder
    it was loaded from (customisation finds the Live3D and EG3D files there), None for a Hub repository.
    """

    def __init__(self, model: EditorModel, text_model: str | os.PathLike | None = None,
                 text_revision: str | None = INSTRUCT_PIX2PIX_REVISION, cache_dir: str | os.PathLike | None = None,
                 anchors: list[Anchor] | None = None, weights_folder: str | os.PathLike | None = None):
        self.model = model.eval()
        self.weights_folder = Path(weights_folder) if weights_folder is not None else None
        self.text_model = text_model or INSTRUCT_PIX2PIX_REPO
        self.text_revision = text_revision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.anchors = anchors if anchors is not None else shipped_anchors()
        self._text: TextReference | None = None
        self.style_lock = threading.Lock()  # held by every encode: a style applied for one call is seen by no other
        self._fingerprint: str | None = None
        self._live3d: tuple[ReconstructionModel, bool] | None = None  # (network, shares_branches), loaded on first use

    @property
    def untrained(self) -> bool:
        return self.model.config.untrained

    @property
    def device(self) -> torch.device:
        return self.model.renderer.const.device

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | None = None, *, repo_id: str | None = None,
                        revision: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, cache_dir: str | os.PathLike | None = None,
                        precision: str = "exact", download: bool = False) -> PortraitEditor:
        """Load from a weight folder (default ``$THREEDPE_WEIGHTS`` or ``checkpoints/``), else the Hub.

        ``source`` is a folder or a Hub repository id (``owner/name``; the same as ``repo_id=``), read at
        ``revision`` (a commit sha, or ``$THREEDPE_HUB_REVISION``). The folder holds ``3dpe.safetensors`` +
        ``3dpe.json`` (converted) or the released ``3dpe.pt``; optionally ``instruct-pix2pix/`` (diffusers layout;
        otherwise ``timbrooks/instruct-pix2pix`` is loaded from the Hub on the first text edit) and the EG3D generator
        (whose frontal samples then serve as anchor portraits for text edits, beside the shipped photos). Text
        references are cached in memory and in ``cache_dir`` (default :func:`default_cache_dir`). ``device``: None
        (CPU), ``"auto"``, or a device. ``precision``: ``"exact"`` or ``"fast"`` (see :attr:`precision`). ``download``:
        when the folder lacks the editor, fetch what editing needs from the official sources first (the licences are
        asked for in a terminal; see ``python -m threedpe download``). Raises ``MissingWeightsError`` naming what is
        missing.
        """
        check_precision(precision)
        if source is not None and not Path(source).expanduser().exists() and HUB_REPO_ID.fullmatch(str(source)):
            source, repo_id = None, str(source)
        folder = Path(source).expanduser() if source is not None else default_folder()
        if download and repo_id is None and not any((folder / name).is_file() for name in EDITOR_WEIGHTS):
            from threedpe.fetch.download import first_start

            first_start(folder, requested=True)
        try:
            weights = resolve_first(EDITOR_WEIGHTS, local_dir=folder, repo_id=repo_id, revision=revision)
        except MissingWeightsError as missing:
            raise MissingWeightsError(f"no 3DPE editor weights (3dpe.pt, or its converted 3dpe.safetensors + "
                                      f"3dpe.json): {missing}", filename="3dpe.pt", folder=folder) from None
        if weights.suffix == ".safetensors":  # its config must sit beside it (the Hub keeps a snapshot together)
            resolve_weight(weights.with_suffix(".json").name, local_dir=folder, repo_id=repo_id, revision=revision)
        model = EditorModel.from_checkpoint(load_3dpe(weights))
        text_model, text_revision = text_model_source(folder)
        editor = cls(model, text_model=text_model, text_revision=text_revision, cache_dir=cache_dir,
                     weights_folder=folder if repo_id is None else None)
        generator = local_eg3d_weights(folder)
        if generator is not None:
            editor.anchors = eg3d_anchors(generator, editor.cache_dir / "anchors",
                                          device=lambda: editor.device) + editor.anchors
        editor.precision = precision
        return editor.to(device, dtype)

    @property
    def precision(self) -> str:
        """``"exact"`` (float32, equal to the official code within the golden tolerance; the default) or ``"fast"``
        (bfloat16 encoder and super-resolution where the hardware computes bfloat16 natively, else float32; bounds in
        the README): see :mod:`threedpe.precision`. Settable; applies from the next encode or render on."""
        return self.model.inference.precision

    @precision.setter
    def precision(self, precision: str) -> None:
        self.model.inference.precision = precision

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PortraitEditor:
        """Move to ``device`` (``"auto"``: CUDA when available); ``dtype`` applies to the encoder (the renderer stays
        float32 for accuracy). A CUDA device on a machine without CUDA is refused with a clear ``DeviceError``."""
        if device is not None:
            device = resolve_device(device)
            self.model.to(device)
            if self._text is not None:
                self._text.editor.to(device)
            if self._live3d is not None:
                self._live3d[0].to(device)
        if dtype is not None:
            self.model.encoder.to(dtype)
            if self._live3d is not None:
                self._live3d[0].encoder.to(dtype)
        return self

    @property
    def strength_unavailable(self) -> str | None:
        """None when edits can be re-rendered at any strength (:meth:`EditResult.with_strength`); else why not, naming
        the file that enables it (the UI hides its strength slider then). Looks for the file, loads nothing."""
        folder = self.weights_folder
        if self._live3d is not None or folder is not None and any((folder / n).is_file() for n in RECONSTRUCTION_WEIGHTS):
            return None
        where = f"the weight folder {folder}" if folder is not None else "a local weight folder (Hub-loaded editors have none)"
        return (f"edit strengths other than 1 need Live3D's reconstruction network for the unedited portrait: put "
                f"{RECONSTRUCTION_WEIGHTS[1]} (or its converted {RECONSTRUCTION_WEIGHTS[0]} + .json) in {where}")

    def reconstruction(self) -> tuple[ReconstructionModel, bool]:
        """Live3D's network on this editor's device and inference options, and whether it shares the editor's E_low /
        E_high branches and renderer (loaded once). ``MissingWeightsError`` naming the file when it is absent."""
        self.require_strength()
        with self.style_lock:  # no style is applied while the branches are compared
            if self._live3d is None:
                live3d = ReconstructionModel.from_checkpoint(load_3dpe(resolve_reconstruction_weights(self.weights_folder)))
                live3d.renderer.inference = self.model.inference  # one precision / fast-path setting for both
                live3d.to(self.device).encoder.to(next(self.model.encoder.parameters()).dtype)
                self._live3d = (live3d, live3d.shares_branches(self.model))
        return self._live3d

    def require_strength(self) -> None:
        """Raise the ``MissingWeightsError`` of :attr:`strength_unavailable` (naming the Live3D file), if any."""
        if self.strength_unavailable is not None:
            raise MissingWeightsError(self.strength_unavailable, filename=RECONSTRUCTION_WEIGHTS[1],
                                      folder=self.weights_folder)

    def reconstruct(self, crop: Image.Image, branches: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The unedited 3D reconstruction (1, 96, P, P) of an aligned ``crop``: Live3D's ``Final_encoder`` on the
        editor's ``branches`` (E_low, E_high) of it when the networks share them (as the released files do), else
        Live3D's whole encoder on the crop."""
        live3d, shared = self.reconstruction()
        with torch.inference_mode():
            if shared and branches is not None:
                return live3d.from_branches(*branches)
            return live3d.encode(preprocess_input(crop, self.model.config.encoder.image_size).to(self.device))

    @property
    def fingerprint(self) -> str:
        """The weights fingerprint that styles are checked against (:func:`threedpe.styles.model_fingerprint` of the
        unstyled editor; computed once)."""
        with self.style_lock:
            return self._unstyled_fingerprint()

    def _unstyled_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def load_style(self, path: str | os.PathLike) -> Style:
        """Read a style file and check that it was made for these weights (``StyleError`` otherwise)."""
        style = Style.load(path)
        style.check_base(self.fingerprint)
        return style

    def encode(self, x: torch.Tensor, ref: torch.Tensor, style: Style | None = None,
               keep_branches: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The editor's tri-planes (B, 96, S/2, S/2) for inputs x (B, 3, S, S) in [-1, 1] and references ref
        (B, 3, 224, 224) ImageNet-normalised, with ``style`` applied for this call only (restored bit-exactly after);
        ``keep_branches``: also the E_low / E_high features (see :meth:`EditorModel.encode`). Thread-safe: every
        encode holds ``style_lock``."""
        with self.style_lock:
            if style is None:
                return self.model.encode(x, ref, keep_branches)
            style.check_base(self._unstyled_fingerprint())
            with applied(self.model.encoder, style):
                return self.model.encode(x, ref, keep_branches)

    @property
    def text_reference(self) -> TextReference:
        """The InstructPix2Pix text route (loaded on first use: the model is large)."""
        if self._text is None:
            editor = InstructPix2PixEditor.from_pretrained(self.text_model, revision=self.text_revision,
                                                           device=self.device)
            self._text = TextReference(editor, self.anchors, cache_dir=self.cache_dir)
        return self._text

    def align(self, image: ImageInput, aligned: bool = False) -> tuple[Image.Image, AlignedFace | None, list[str]]:
        """The editor's input crop (512^2, the EG3D crop size; the encoder resizes it to its input), the detection
        (None when ``aligned``) and notes for the user: detected + EG3D-aligned, or (``aligned=True``) the photo
        resized as it is."""
        if aligned:
            photo = load_image(image)
            size = AlignConfig().output_size
            return photo.resize((size, size), Image.Resampling.BICUBIC), None, [n for n in (frames_note(photo),) if n]
        face = align_face(image)
        return face.image, face, list(face.warnings)

    def reference_image(self, reference: ImageInput | None, prompt: str | None, *, align_reference: bool = False,
                        anchor_index: int | None = None, own_crop: Image.Image | None = None,
                        settings: EditSettings | None = None, seed: int = 0, cancel: CancelSignal | None = None,
                        ) -> tuple[Image.Image, Image.Image | None, str | None, list[str]]:
        """The image the editor takes as its reference: (image, InstructPix2Pix output or None, anchor label or None,
        notes). A ``reference`` is loaded (aligned first with ``align_reference``); a checked ``prompt`` is applied to
        the anchor ``anchor_index`` (cached) or, with ``anchor_index=None``, to ``own_crop``."""
        if prompt is None:
            if align_reference:
                ref_image, note = align_reference_photo(reference)
                notes = [note]
            else:
                ref_image, notes = load_image(reference), []
            notes += [note for note in (frames_note(ref_image),) if note] + reference_notes(ref_image)
            return ref_image, None, None, notes
        settings = settings or EditSettings()
        if anchor_index is None:
            edited = self.text_reference.edit_photo(own_crop, prompt, settings, seed=seed, cancel=cancel)
            return edited, edited, None, []
        edited = self.text_reference.reference(prompt, settings, anchor_index, seed, cancel=cancel).image
        return edited, edited, self.anchors[anchor_index].label, []

    def __call__(self, image: ImageInput, reference: ImageInput | None = None, prompt: str | None = None, *,
                 aligned: bool = False, align_reference: bool = False, anchor: int | str = 0,
                 use_own_photo: bool = False, settings: EditSettings | None = None, seed: int = 0,
                 style: Style | None = None, cancel: CancelSignal | None = None, strength: float = 1.0) -> EditResult:
        """Edit a portrait with a reference image or a text instruction (exactly one of them).

        image: a photo (path, bytes, array or PIL); it is detected and aligned unless ``aligned=True``.
        reference: an image whose style is applied, used as given (the official preprocessing resizes it); with
        ``align_reference=True`` a raw reference photo is aligned like the input first (an aligned crop is kept).
        prompt: an InstructPix2Pix instruction, applied to an anchor portrait (cached; ``anchor`` is its index or
        name, see ``self.anchors``) or, with ``use_own_photo=True``, to the aligned photo itself (not cached).
        style: a customised style (:meth:`load_style`) applied to the editor for this call only, with either route.
        cancel: checked between the stages and the denoising steps; raises ``threedpe.cancel.Cancelled``.
        strength: how strongly the edit applies, in :data:`STRENGTH_RANGE` (0 = the unedited reconstruction, 1 = the
        edit, bit-identical to leaving it out); change it later with :meth:`EditResult.with_strength`, no re-encode.
        """
        if (reference is None) == (prompt is None):
            raise ValueError("give either a reference image or a text instruction (exactly one)")
        if check_strength(strength) != 1.0:  # before any work: fails fast
            self.require_strength()
        if style is not None:
            style.check_base(self.fingerprint)  # before any work: fails fast
        if prompt is not None:
            prompt = self.text_reference.editor.check_instruction(prompt)  # before any work: fails fast
            settings = settings or EditSettings()
            anchor_index = None if use_own_photo else self.text_reference.anchor_index(anchor)
        else:
            anchor_index = None
        timings: dict[str, float] = {}
        start = time.perf_counter()
        crop, face, notes = self.align(image, aligned)
        timings["align"] = time.perf_counter() - start

        check(cancel, "before the reference")
        start = time.perf_counter()
        ref_image, edited_2d, anchor_label, ref_notes = self.reference_image(
            reference, prompt, align_reference=align_reference, anchor_index=anchor_index, own_crop=crop,
            settings=settings, seed=seed, cancel=cancel)
        notes += ref_notes
        timings["reference"] = time.perf_counter() - start

        check(cancel, "before encoding")
        result = self.edit_crops([crop], ref_image, style)[0]
        result.alignment, result.edited_2d, result.anchor = face, edited_2d, anchor_label
        result.timings, result.warnings = {**timings, **result.timings}, notes + result.warnings
        return result if strength == 1.0 else result.with_strength(strength)

    def edit_crops(self, crops: list[Image.Image], reference: Image.Image, style: Style | None = None) -> list[EditResult]:
        """Edit aligned crops (as :meth:`align` returns them) with one prepared ``reference`` image, encoded as one batch:
        one :class:`EditResult` per crop at strength 1 (``timings["encode"]`` its share of the batch). The E_low / E_high
        features are kept with each result while strengths are available, so that :meth:`EditResult.with_strength`
        needs no second encode."""
        start = time.perf_counter()
        size = self.model.config.encoder.image_size
        x = torch.cat([preprocess_input(crop, size) for crop in crops]).to(self.device)
        ref = preprocess_reference(reference).to(self.device).expand(len(crops), -1, -1, -1)
        keep = self.strength_unavailable is None
        with torch.inference_mode():
            out = self.encode(x, ref, style, keep)
        planes, branches = (out[0], out[1:]) if keep else (out, ())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(crops)
        notes = [UNTRAINED_NOTE] if self.untrained else []

        def one(t: torch.Tensor, i: int) -> torch.Tensor:  # a batch of one is the batch itself (bit-identical, no copy)
            return t if len(crops) == 1 else t[i:i + 1].clone()

        return [EditResult(planes=one(planes, i), image=crop, reference=reference, editor=self,
                           timings={"encode": seconds}, warnings=list(notes),
                           unedited=Unedited(tuple(one(t, i) for t in branches) if branches else None))
                for i, crop in enumerate(crops)]
