"""Face detection (MTCNN in PyTorch) and the EG3D in-the-wild portrait crop.

Detector: a port of PyPI ``mtcnn`` 1.0.0 (P/R/O-Net, TF AREA image pyramid, matrix NMS,
``crop_and_resize`` patches) that reads the package's own weight files; TensorFlow is not needed.
Alignment: Deep3DFaceRecon ``align_img`` (POS least squares to the BFM 5-point template, rescale 300,
1024 crop) followed by EG3D's centre crop 700 and resize to 512, on the PIL path EG3D uses.
Conventions: landmarks are (x, y) pixels with pixel centres at integers, in the order
``LANDMARK_NAMES``; "left" is image left.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from threedpe.images import ImageInput, frames_note, load_image

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# BFM 5-point template (Deep3DFaceRecon ``load_lm3d``), float32 as the reference computes it.
LM3D_STD = np.array(
    [
        [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
        [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
        [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
        [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
        [0.24846619367599487, -0.38128235936164856, 0.22235769033432007],
    ],
    dtype=np.float32,
)

# SHA-256 of the weight files inside the mtcnn 1.0.0 wheel (mtcnn/assets/weights/).
MTCNN_WEIGHT_SHA256 = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}

MIN_PHOTO_SIDE = 64  # smaller photos cannot hold a face MTCNN finds and the crop enlarges usefully
NO_FACE_ADVICE = (
    "Please use a photo with one frontal, well-lit face that fills a good part of the frame "
    "(roughly a quarter of the image height or more), not covered by hands, hair or sunglasses."
)


class NoFaceError(ValueError):
    """No usable face was found in the image; the message carries advice for the user."""


# ----------------------------------------------------------------------------------------------
# Networks


class PNet(nn.Module):
    """Proposal net, fully convolutional. (N, 3, H, W) in [-1, 1] → box regression (N, 4, h, w),
    face probability (N, h, w) with h = ceil((H - 2) / 2) - 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def keras_layers(self) -> list[nn.Module]:
        """Layers in the order of the Keras ``get_weights()`` list."""
        return [self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3, self.box, self.cls]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.box(x), self.cls(x).softmax(dim=1)[:, 1]


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, W*H*C) in Keras' (W, H, C) order, which the dense weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refine net. (N, 3, 24, 24) in [-1, 1] → box regression (N, 4), face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.fc4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.box = nn.Linear(128, 4)
        self.cls = nn.Linear(128, 2)

    def keras_layers(self) -> list[nn.Module]:
        return [self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3,
                self.fc4, self.prelu4, self.box, self.cls]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.fc4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return self.box(x), self.cls(x).softmax(dim=1)[:, 1]


class ONet(nn.Module):
    """Output net. (N, 3, 48, 48) in [-1, 1] → box regression (N, 4), landmarks (N, 10) as
    [x1..x5, y1..y5] relative to the box, face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.box = nn.Linear(256, 4)
        self.landmarks = nn.Linear(256, 10)
        self.cls = nn.Linear(256, 2)

    def keras_layers(self) -> list[nn.Module]:
        return [self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3, self.conv4,
                self.prelu4, self.fc5, self.prelu5, self.box, self.landmarks, self.cls]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.fc5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return self.box(x), self.landmarks(x), self.cls(x).softmax(dim=1)[:, 1]


def load_keras_weights(net: PNet | RNet | ONet, arrays: list[np.ndarray]) -> None:
    """Copy a Keras ``get_weights()`` list (HWIO conv kernels, (in, out) dense kernels, PReLU alphas)
    into ``net``; shapes and count must match exactly."""
    queue = list(arrays)
    for layer in net.keras_layers():
        if isinstance(layer, nn.Conv2d):
            tensors = {"weight": queue.pop(0).transpose(3, 2, 0, 1), "bias": queue.pop(0)}
        elif isinstance(layer, nn.Linear):
            tensors = {"weight": queue.pop(0).T, "bias": queue.pop(0)}
        else:
            tensors = {"weight": queue.pop(0).reshape(-1)}
        for name, value in tensors.items():
            target = getattr(layer, name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{type(net).__name__}: weight of shape {value.shape} for {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    if queue:
        raise ValueError(f"{type(net).__name__}: {len(queue)} weight arrays left over")


def mtcnn_weights_dir() -> Path:
    """Folder holding ``{pnet,rnet,onet}.lz4`` of the installed ``mtcnn`` package (not imported:
    its ``__init__`` needs TensorFlow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face detection needs the MTCNN weights: `pip install mtcnn==1.0.0` "
                           "(only its weight files are used, TensorFlow is not required)")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "weights"


# ----------------------------------------------------------------------------------------------
# Detector


@dataclass(frozen=True)
class MTCNNConfig:
    """Detection constants of ``mtcnn`` 1.0.0 (all thresholds are strict ``>``)."""

    min_face_size: float = 20.0
    min_size: int = 12
    scale_factor: float = 0.709
    threshold_pnet: float = 0.6
    nms_pnet_level: float = 0.5
    nms_pnet_all: float = 0.7
    threshold_rnet: float = 0.7
    nms_rnet: float = 0.7
    threshold_onet: float = 0.8
    nms_onet: float = 0.7


@dataclass(frozen=True)
class Face:
    """One detection: ``box`` (x1, y1, x2, y2) float pixels clipped to the image, ONet ``confidence``
    in [0, 1], ``landmarks`` (5, 2) float64 (x, y) in ``LANDMARK_NAMES`` order."""

    box: tuple[float, float, float, float]
    confidence: float
    landmarks: np.ndarray

    @property
    def box_xywh(self) -> tuple[int, int, int, int]:
        """Rounded (x, y, w, h) as ``mtcnn`` returns it by default."""
        x1, y1, x2, y2 = self.box
        return tuple(int(v) for v in np.round([x1, y1, x2 - x1, y2 - y1]))

    @property
    def keypoints(self) -> np.ndarray:
        """Landmarks rounded half-to-even to integers, (5, 2) int64 (what EG3D writes)."""
        return np.round(self.landmarks).astype(np.int64)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


def _area_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of TensorFlow's AREA resize along one axis (fractional pixel coverage,
    float32 scale as TF computes it), normalised to sum 1 per output."""
    scale = float(np.float32(n_in) / np.float32(n_out))
    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        start, end = o * scale, (o + 1) * scale
        for i in range(math.floor(start), math.ceil(end)):
            matrix[o, min(i, n_in - 1)] += min(i + 1.0, end) - max(float(i), start)
    return matrix / scale


def _area_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, H, W) → (3, height, width), TensorFlow AREA resize."""
    rows = torch.from_numpy(_area_resize_matrix(image.shape[1], height)).to(image.dtype)
    cols = torch.from_numpy(_area_resize_matrix(image.shape[2], width)).to(image.dtype)
    return rows @ image @ cols.T


def _crop_and_resize(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """``tf.image.crop_and_resize`` of (H, W, 3) ``image`` with pixel boxes (N, 4) x1, y1, x2, y2
    (normalised by H and W), bilinear, 0 outside → (N, 3, size, size)."""
    height, width = image.shape[:2]
    steps = np.arange(size) / (size - 1)

    def axis(lo: np.ndarray, hi: np.ndarray, n: int):
        pos = (lo[:, None] + steps[None] * (hi - lo)[:, None]) * (n - 1) / n
        inside = (pos >= 0) & (pos <= n - 1)
        low = np.clip(np.floor(pos), 0, n - 1).astype(np.int64)
        high = np.clip(np.ceil(pos), 0, n - 1).astype(np.int64)
        frac = torch.from_numpy(pos - np.floor(pos)).to(image.dtype)
        return torch.from_numpy(low), torch.from_numpy(high), frac, torch.from_numpy(inside)

    y0, y1, fy, in_y = axis(boxes[:, 1], boxes[:, 3], height)
    x0, x1, fx, in_x = axis(boxes[:, 0], boxes[:, 2], width)

    def pixels(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return image[rows[:, :, None], cols[:, None, :]]  # (N, S, S, 3)

    fx = fx[:, None, :, None]
    top_left, bottom_left = pixels(y0, x0), pixels(y1, x0)
    top = top_left + (pixels(y0, x1) - top_left) * fx
    bottom = bottom_left + (pixels(y1, x1) - bottom_left) * fx
    patches = top + (bottom - top) * fy[:, :, None, None]
    patches = patches * (in_y[:, :, None] & in_x[:, None, :])[..., None]
    return patches.permute(0, 3, 1, 2).contiguous()


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Matrix NMS of ``mtcnn`` 1.0.0: sort by score (descending, as a reversed ascending argsort);
    box i survives iff its overlap with every earlier box (suppressed or not) is ≤ ``threshold``.
    Returns the kept indices in score order."""
    order = np.argsort(scores)[::-1]
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter_w = np.maximum(0.0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]))
    inter_h = np.maximum(0.0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]))
    inter = inter_w * inter_h
    if method == "union":
        overlap = inter / (area[:, None] + area[None, :] - inter)
    else:
        overlap = inter / np.minimum(area[:, None], area[None, :])
    earlier = np.triu(np.ones_like(overlap, dtype=bool), k=1)
    keep = ~np.any((overlap > threshold) & earlier, axis=0)
    return order[keep]


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow (N, 4) x1, y1, x2, y2 boxes to squares around their centres (no rounding)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w / 2 - side / 2
    y1 = boxes[:, 1] + h / 2 - side / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _refine(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box regression with the +1 width convention."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], axis=1)


class FaceDetector:
    """MTCNN (``mtcnn`` 1.0.0 weights and pipeline) in PyTorch on CPU."""

    def __init__(self, weights_dir: str | Path | None = None, config: MTCNNConfig = MTCNNConfig()) -> None:
        folder = Path(weights_dir) if weights_dir is not None else mtcnn_weights_dir()
        self.config = config
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            path = folder / f"{name}.lz4"
            if not path.is_file():
                raise RuntimeError(f"MTCNN weights not found: {path} (`pip install mtcnn==1.0.0`)")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != MTCNN_WEIGHT_SHA256[name]:
                raise RuntimeError(f"{path} is not the mtcnn 1.0.0 weight file (sha256 {digest})")
            load_keras_weights(net, joblib.load(path))
            net.eval().requires_grad_(False)

    def pyramid_scales(self, height: int, width: int) -> list[float]:
        """Scales 0.6·0.709^k of the PNet pyramid, with mtcnn 1.0.0's level count."""
        c = self.config
        count = round(-(math.log(min(height, width) / c.min_size) / math.log(c.scale_factor) + 1))
        return [c.min_size / c.min_face_size * c.scale_factor**k for k in range(max(count, 0))]

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) RGB array with values 0..255, by descending confidence;
        coordinates in that array's pixels."""
        c = self.config
        height, width = rgb.shape[:2]
        image = (torch.from_numpy(np.asarray(rgb, dtype=np.float32)) - 127.5) * 0.0078125
        planes = image.permute(2, 0, 1).contiguous()

        # Stage 1: PNet over the pyramid.
        proposals = []
        for scale in self.pyramid_scales(height, width):
            level = _area_resize(planes, int(height * scale), int(width * scale))
            reg, prob = self.pnet(level[None])
            reg, prob = reg[0].double().numpy(), prob[0].double().numpy()
            ys, xs = np.nonzero(prob > c.threshold_pnet)
            if len(ys) == 0:
                continue
            r = reg[:, ys, xs].T
            boxes = np.stack([2 * xs + 1 + 11 * r[:, 0], 2 * ys + 1 + 11 * r[:, 1],
                              2 * xs + 12 + 11 * r[:, 2], 2 * ys + 12 + 11 * r[:, 3]], axis=1) / scale
            scores = prob[ys, xs]
            keep = _nms(boxes, scores, c.nms_pnet_level)
            proposals.append(np.column_stack([boxes[keep], scores[keep]]))
        if not proposals:
            return []
        found = np.concatenate(proposals)
        found = found[_nms(found[:, :4], found[:, 4], c.nms_pnet_all)]
        boxes = _square(found[:, :4])

        # Stage 2: RNet on 24×24 patches.
        reg, prob = self.rnet(_crop_and_resize(image, boxes, 24))
        reg, prob = reg.double().numpy(), prob.double().numpy()
        boxes = _refine(boxes, reg)
        mask = prob > c.threshold_rnet
        boxes, prob = boxes[mask], prob[mask]
        if len(boxes) == 0:
            return []
        boxes = _square(boxes[_nms(boxes, prob, c.nms_rnet)])

        # Stage 3: ONet on 48×48 patches; landmarks are decoded relative to the input boxes.
        reg, lmk, prob = (t.double().numpy() for t in self.onet(_crop_and_resize(image, boxes, 48)))
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        landmarks = np.stack([w * lmk[:, :5] + boxes[:, 0:1] - 1, h * lmk[:, 5:] + boxes[:, 1:2] - 1], axis=2)
        boxes = _refine(boxes, reg)
        mask = prob > c.threshold_onet
        boxes, landmarks, prob = boxes[mask], landmarks[mask], prob[mask]
        if len(boxes) == 0:
            return []
        keep = _nms(boxes, prob, c.nms_onet, method="min")
        boxes = np.clip(boxes[keep], 0, [width - 1, height - 1, width - 1, height - 1])
        return [Face(tuple(float(v) for v in b), float(p), lm) for b, p, lm in zip(boxes, prob[keep], landmarks[keep])]


_DETECTOR: FaceDetector | None = None
_DETECTOR_LOCK = threading.Lock()


def get_detector() -> FaceDetector:
    """The shared detector, created (weights loaded) on first use; safe to call from several threads."""
    global _DETECTOR
    with _DETECTOR_LOCK:
        if _DETECTOR is None:
            _DETECTOR = FaceDetector()
        return _DETECTOR


def detect_faces(image: ImageInput, *, max_side: int | None = 1024,
                 detector: FaceDetector | None = None) -> list[Face]:
    """Faces in ``image`` (anything :func:`~threedpe.images.load_image` reads), by descending confidence.

    Images whose longest side exceeds ``max_side`` are searched on a downscaled copy (LANCZOS) and the
    results mapped back to full-resolution pixel coordinates; ``None`` always uses full resolution.
    """
    rgb = load_image(image)
    detector = detector or get_detector()
    factor = 1.0
    if max_side is not None and max(rgb.size) > max_side:
        factor = max(rgb.size) / max_side
        small = (max(1, round(rgb.width / factor)), max(1, round(rgb.height / factor)))
        fx, fy = rgb.width / small[0], rgb.height / small[1]
        faces = detector.detect(np.asarray(rgb.resize(small, Image.Resampling.LANCZOS)))
        limit = np.array([rgb.width - 1, rgb.height - 1], dtype=np.float64)
        return [
            Face(
                box=tuple(float(v) for v in np.clip((np.reshape(f.box, (2, 2)) + 0.5) * [fx, fy] - 0.5, 0, limit).ravel()),
                confidence=f.confidence,
                landmarks=(f.landmarks + 0.5) * [fx, fy] - 0.5,
            )
            for f in faces
        ]
    return detector.detect(np.asarray(rgb))


# ----------------------------------------------------------------------------------------------
# EG3D alignment


@dataclass(frozen=True)
class AlignConfig:
    """Deep3DFaceRecon ``align_img`` and EG3D crop constants."""

    target_size: int = 1024
    rescale_factor: float = 300.0
    center_crop: int = 700
    output_size: int = 512


@dataclass(frozen=True)
class AlignParams:
    """Geometry of one EG3D crop.

    ``scale_raw``/``t``: POS scale and template-origin position (x, y-up) in the source image;
    ``s = rescale_factor / scale_raw``; the source (``source_size`` w0, h0) is resized to
    ``resized_size``, cropped to ``crop_box`` (1024², black outside), then to ``center_crop_box``
    and resized to ``output_size``².
    """

    source_size: tuple[int, int]
    scale_raw: float
    s: float
    t: tuple[float, float]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    center_crop_box: tuple[int, int, int, int]
    output_size: int

    def project(self, points: np.ndarray) -> np.ndarray:
        """Source pixel coordinates (..., 2) → output-crop pixel coordinates (PIL pixel centres)."""
        points = np.asarray(points, dtype=np.float64)
        zoom = np.array(self.resized_size) / np.array(self.source_size)
        offset = np.array(self.crop_box[:2]) + np.array(self.center_crop_box[:2])
        side = self.center_crop_box[2] - self.center_crop_box[0]
        return ((points + 0.5) * zoom - offset) * (self.output_size / side) - 0.5


def fit_template(landmarks: np.ndarray, height: int) -> np.ndarray:
    """Least-squares weak-perspective fit of ``LM3D_STD`` to 5 landmarks (5, 2) (x, y) of an image ``height`` pixels
    high: k (8,) with x = k[0:3]·X + k[3] and y_up = k[4:7]·X + k[7] (y flipped up, as EG3D: float32 flip, float64
    solve). k[0:3] and k[4:7] are the scaled first two rows of the head's rotation."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    x, y_up = lm[:, 0].astype(np.float64), (np.float32(height - 1) - lm[:, 1]).astype(np.float64)
    template = LM3D_STD.astype(np.float64)
    design = np.zeros((10, 8))
    design[0::2, 0:3], design[0::2, 3] = template, 1.0
    design[1::2, 4:7], design[1::2, 7] = template, 1.0
    target = np.stack([x, y_up], axis=1).reshape(-1)
    return np.linalg.lstsq(design, target, rcond=None)[0]


def align_params(landmarks: np.ndarray, size: tuple[int, int], config: AlignConfig = AlignConfig()) -> AlignParams:
    """EG3D crop geometry for 5 landmarks (5, 2) (x, y) in an image of ``size`` (w0, h0).

    As in EG3D the landmarks are taken as float32 and flipped to y-up in float32; the least squares
    and everything after run in float64.
    """
    w0, h0 = size
    k = fit_template(landmarks, h0)
    scale_raw = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    tx, ty = float(k[3]), float(k[7])
    s = config.rescale_factor / scale_raw
    w, h = int(w0 * s), int(h0 * s)
    half = config.target_size / 2
    left = int(w / 2 - half + (tx - w0 / 2) * s)
    up = int(h / 2 - half + (h0 / 2 - ty) * s)
    c0 = int(half - config.center_crop / 2)
    return AlignParams(
        source_size=(int(w0), int(h0)), scale_raw=float(scale_raw), s=float(s), t=(tx, ty), resized_size=(w, h),
        crop_box=(left, up, left + config.target_size, up + config.target_size),
        center_crop_box=(c0, c0, c0 + config.center_crop, c0 + config.center_crop),
        output_size=config.output_size,
    )


def crop_aligned(image: Image.Image, params: AlignParams, *, max_full_resize_pixels: int = 25_000_000) -> Image.Image:
    """The EG3D crop of an RGB ``image``: BICUBIC resize to ``resized_size``, 1024 crop (black fill),
    centre crop, LANCZOS to ``output_size`` (the PIL path of EG3D, pixel-exact).

    When the resized image would exceed ``max_full_resize_pixels`` (large photos), only the pixels of
    the final window are resampled (PIL ``resize(box=...)``): same geometry, values within ±2.
    """
    if image.size != params.source_size:
        raise ValueError(f"image is {image.size}, the alignment was computed for {params.source_size}")
    w0, h0 = params.source_size
    w, h = params.resized_size
    if w * h <= max_full_resize_pixels:
        window = image.resize((w, h), Image.Resampling.BICUBIC).crop(params.crop_box).crop(params.center_crop_box)
    else:
        x0 = params.crop_box[0] + params.center_crop_box[0]
        y0 = params.crop_box[1] + params.center_crop_box[1]
        side = params.center_crop_box[2] - params.center_crop_box[0]
        window = Image.new("RGB", (side, side))
        left, top, right, bottom = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if right > left and bottom > top:
            box = (left * w0 / w, top * h0 / h, right * w0 / w, bottom * h0 / h)
            region = image.resize((right - left, bottom - top), Image.Resampling.BICUBIC, box=box)
            window.paste(region, (left - x0, top - y0))
    return window.resize((params.output_size, params.output_size), Image.Resampling.LANCZOS)


@dataclass
class AlignedFace:
    """Result of :func:`align_face`: ``image`` the 512² RGB crop; ``landmarks`` (5, 2) the source-pixel
    keypoints the crop was computed from; ``face`` the chosen detection (float landmarks, box,
    confidence); ``num_faces`` faces found above the confidence threshold; ``warnings``
    human-readable quality notes."""

    image: Image.Image
    landmarks: np.ndarray
    params: AlignParams
    face: Face
    num_faces: int
    warnings: list[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return self.face.confidence

    @property
    def output_landmarks(self) -> np.ndarray:
        """The keypoints in output-crop pixels, (5, 2)."""
        return self.params.project(self.landmarks)


def pick_face(faces: list[Face], min_confidence: float = 0.9) -> Face | None:
    """EG3D's choice: the face with the largest rounded box w + h among those with confidence
    above ``min_confidence``; ``None`` when there is none."""
    confident = [f for f in faces if f.confidence > min_confidence]
    if not confident:
        return None
    return max(confident, key=lambda f: f.box_xywh[2] + f.box_xywh[3])


def align_face(
    image: ImageInput,
    *,
    min_confidence: float = 0.9,
    round_keypoints: bool = True,
    max_detect_side: int | None = 1024,
    min_eye_distance: float = 32.0,
    config: AlignConfig = AlignConfig(),
    detector: FaceDetector | None = None,
) -> AlignedFace:
    """Detect the main face of ``image`` and return its EG3D-aligned ``config.output_size``² crop.

    Detection runs on a copy downscaled to ``max_detect_side``; the crop is taken from the full
    resolution. ``round_keypoints`` follows EG3D (integer keypoints). Faces whose eyes are closer than
    ``min_eye_distance`` source pixels give a warning. Raises :class:`NoFaceError` with advice when
    no face above ``min_confidence`` is found.
    """
    rgb = load_image(image)
    if min(rgb.size) < MIN_PHOTO_SIDE:
        raise NoFaceError(f"The photo is only {rgb.width}×{rgb.height} pixels, too small to find a face in; "
                          f"use a photo at least {MIN_PHOTO_SIDE} pixels on each side (512 or more works best).")
    faces = detect_faces(rgb, max_side=max_detect_side, detector=detector)
    face = pick_face(faces, min_confidence)
    if face is None:
        if faces:
            best = max(f.confidence for f in faces)
            raise NoFaceError(f"No clear face found (best detection confidence {best:.2f} ≤ {min_confidence}). "
                              + NO_FACE_ADVICE)
        raise NoFaceError("No face found in the image. " + NO_FACE_ADVICE)
    landmarks = face.keypoints.astype(np.float64) if round_keypoints else face.landmarks.copy()
    params = align_params(landmarks, rgb.size, config)
    num_faces = sum(f.confidence > min_confidence for f in faces)
    notes = [note for note in (frames_note(rgb),) if note]
    if num_faces > 1:
        notes.append(f"{num_faces} faces found; the largest one was used.")
    if face.eye_distance < min_eye_distance:
        notes.append(
            f"The face is small (eyes {face.eye_distance:.0f} px apart, the crop enlarges it "
            f"{params.s * config.output_size / config.center_crop:.1f}×); the result will look soft. "
            "A closer or higher-resolution photo works better."
        )
    x0 = params.crop_box[0] + params.center_crop_box[0]
    y0 = params.crop_box[1] + params.center_crop_box[1]
    side = config.center_crop
    w, h = params.resized_size
    if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
        notes.append("The face is close to the image border; the missing part of the crop is filled with black.")
    return AlignedFace(image=crop_aligned(rgb, params), landmarks=landmarks, params=params, face=face,
                       num_faces=num_faces, warnings=notes)


def is_aligned_crop(params: AlignParams, tolerance: float = 0.04) -> bool:
    """True when the EG3D crop of an image is the image itself (square, same window within ``tolerance`` of its
    side): the image is already an aligned portrait, and aligning it again would only resample it."""
    w0, h0 = params.source_size
    zoom = params.resized_size[0] / w0
    x0 = (params.crop_box[0] + params.center_crop_box[0]) / zoom
    y0 = (params.crop_box[1] + params.center_crop_box[1]) / zoom
    side = (params.center_crop_box[2] - params.center_crop_box[0]) / zoom
    return w0 == h0 and max(abs(x0), abs(y0), abs(side - w0)) <= tolerance * w0


def align_reference(image: ImageInput, *, min_confidence: float = 0.9) -> tuple[Image.Image, str]:
    """A raw reference photo made into an EG3D crop, as the input photo is; returns (image, what was done).

    A reference that is already an aligned crop, or that shows no confident face (a painting, a texture), is
    returned unchanged, so that it is never resampled or padded with black needlessly.
    """
    rgb = load_image(image)
    face = pick_face(detect_faces(rgb), min_confidence)
    if face is None:
        return rgb, "No face found in the reference: it was used as given."
    params = align_params(face.keypoints.astype(np.float64), rgb.size)
    if is_aligned_crop(params):
        return rgb, "The reference is already an aligned portrait: it was used as given."
    return crop_aligned(rgb, params), "The reference photo was aligned like the input photo."
