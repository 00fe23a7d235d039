"""Following one face through video frames: detection, landmark following, One-Euro smoothing, head pose.

Per frame, :class:`FaceTracker` finds the 5 MTCNN landmarks (:mod:`threedpe.alignment`): a full-frame detection on the
first frame, every ``detect_every`` frames and whenever the track is lost; in between, the follower re-detects in a
square around the last box, downscaled to ``follow_side`` pixels (a few times cheaper than a full-frame search). The
landmarks are smoothed by a One-Euro filter (Casiez et al., CHI 2012) in units of the face's size, so that one set of
parameters suits any resolution, and the EG3D crop (:func:`threedpe.alignment.align_params`) is computed from the
smoothed landmarks. The head's yaw/pitch come from a least-squares fit of the alignment's standard 3D landmarks
(:func:`threedpe.alignment.fit_template`), smoothed by a second One-Euro filter. A frame without a face keeps the last
track for ``hold_frames`` frames (marked ``held``); after that the tracker reports no face and starts afresh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from threedpe.alignment import (AlignParams, Face, FaceDetector, align_params, detect_faces, fit_template, get_detector,
                                pick_face)


@dataclass(frozen=True)
class OneEuroParams:
    """One-Euro filter parameters: ``min_cutoff`` (Hz) the cutoff at rest (lower: steadier, more lag), ``beta`` how fast
    the cutoff rises with speed (per unit of the value per second; higher: less lag in fast motion), ``d_cutoff`` (Hz)
    the cutoff of the speed estimate."""

    min_cutoff: float = 1.0
    beta: float = 1.0
    d_cutoff: float = 1.0


# Landmarks in units of the face size (eye centre to mouth centre): steady at rest, little lag at a head turn's speed.
LANDMARK_SMOOTHING = OneEuroParams(min_cutoff=1.0, beta=2.0, d_cutoff=1.0)
# Yaw/pitch in degrees: the 5-point fit is noisier in depth than the landmarks in the image plane.
POSE_SMOOTHING = OneEuroParams(min_cutoff=0.5, beta=0.05, d_cutoff=1.0)


class OneEuroFilter:
    """One-Euro low-pass filter of an array (any shape, filtered element-wise) sampled at known times (seconds)."""

    def __init__(self, params: OneEuroParams):
        self.params = params
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._value = self._speed = None

    def __call__(self, value: np.ndarray, time: float) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self._value is None or time <= self._time:
            self._value, self._speed, self._time = value.copy(), np.zeros_like(value), time
            return value.copy()
        dt, p = time - self._time, self.params
        speed = (value - self._value) / dt
        self._speed = self._speed + self._alpha(p.d_cutoff, dt) * (speed - self._speed)
        alpha = self._alpha(p.min_cutoff + p.beta * np.abs(self._speed), dt)
        self._value = self._value + alpha * (value - self._value)
        self._time = time
        return self._value.copy()


# The fit's pitch for a frontal face: MTCNN's nose and mouth points sit lower than the BFM template's. Measured on the
# shipped frontal portrait (examples/astronaut.jpg and its aligned crops in examples/anchors/: -14 to -20 degrees).
FRONTAL_FIT_PITCH = -17.0


def head_pose(landmarks: np.ndarray, height: int) -> tuple[float, float]:
    """The camera (yaw, pitch) in degrees from the frontal view (:mod:`threedpe.cameras`' public convention) that sees
    the head as 5 landmarks (5, 2) in an image ``height`` pixels high show it: a weak-perspective fit of the standard
    3D landmarks, its rotation made orthonormal, the pitch taken from :data:`FRONTAL_FIT_PITCH`. A head turned to the
    image's right gives a negative yaw (the camera is to its left), a head raised a positive pitch (camera below)."""
    k = fit_template(landmarks, height)
    right = k[0:3] / np.linalg.norm(k[0:3])
    up = k[4:7] - (k[4:7] @ right) * right
    up /= np.linalg.norm(up)
    towards = np.cross(right, up)
    forward = np.array([right[2], up[2], towards[2]])  # the head's own +z (its nose) in (image right, up, viewer)
    yaw = math.atan2(forward[0], forward[2])
    pitch = math.atan2(forward[1], math.hypot(forward[0], forward[2]))
    return -math.degrees(yaw), math.degrees(pitch) - FRONTAL_FIT_PITCH


def crop_window(params: AlignParams) -> np.ndarray:
    """The source-pixel square an EG3D crop shows: [x0, y0, width, height] (pixel edges, float)."""
    zoom = np.array(params.resized_size, dtype=np.float64) / np.array(params.source_size)
    offset = np.array(params.crop_box[:2]) + np.array(params.center_crop_box[:2])
    side = params.center_crop_box[2] - params.center_crop_box[0]
    return np.concatenate([offset / zoom, side / zoom])


@dataclass(frozen=True)
class TrackerSettings:
    """``detect_every``: a full-frame detection at least every this many frames; ``follow_side``: the follower's search
    square (twice the last box, ``follow_margin``) is downscaled to this side in pixels; ``detect_side``: full-frame
    detections run on a copy downscaled to this longest side; ``hold_frames``: frames a lost track is kept;
    ``smoothing``/``pose_smoothing``: One-Euro parameters, None for none."""

    detect_every: int = 12
    follow_side: int = 96
    follow_margin: float = 2.0
    detect_side: int = 640
    hold_frames: int = 5
    min_confidence: float = 0.9
    smoothing: OneEuroParams | None = LANDMARK_SMOOTHING
    pose_smoothing: OneEuroParams | None = POSE_SMOOTHING

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.hold_frames < 0 or self.follow_side < 48 or self.follow_margin < 1.2:
            raise ValueError("detect_every >= 1, hold_frames >= 0, follow_side >= 48 and follow_margin >= 1.2")


@dataclass(frozen=True)
class Track:
    """The face in one frame: ``landmarks`` (5, 2) smoothed source pixels, ``raw_landmarks`` as found; ``params`` the
    EG3D crop of the smoothed landmarks; ``yaw``/``pitch`` the camera in degrees from the frontal view (smoothed);
    ``source`` how it was found: ``"detect"`` (full frame), ``"follow"`` (near the last box) or ``"held"`` (no face
    in this frame: the last track kept); ``confidence`` MTCNN's."""

    landmarks: np.ndarray
    raw_landmarks: np.ndarray
    params: AlignParams
    yaw: float
    pitch: float
    source: str
    confidence: float

    @property
    def held(self) -> bool:
        return self.source == "held"


def face_size(landmarks: np.ndarray) -> float:
    """Eye centre to mouth centre in pixels: the unit in which landmarks are smoothed."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(landmarks[3:5].mean(axis=0) - landmarks[0:2].mean(axis=0))) or 1.0


class FaceTracker:
    """Follows the main face through frames given in order: ``update(frame)`` -> :class:`Track` or None (no face).

    ``fps`` sets the filters' time step. Not thread-safe: one tracker per clip or stream."""

    def __init__(self, settings: TrackerSettings = TrackerSettings(), fps: float = 30.0,
                 detector: FaceDetector | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.settings, self.fps = settings, fps
        self.detector = detector or get_detector()
        self._landmark_filter = OneEuroFilter(settings.smoothing) if settings.smoothing else None
        self._pose_filter = OneEuroFilter(settings.pose_smoothing) if settings.pose_smoothing else None
        self.frame_index = -1
        self._box: np.ndarray | None = None
        self._since_detect = 0
        self._missing = 0
        self._last: Track | None = None
        self._unit = 1.0

    def reset(self) -> None:
        """Forget the face (the next frame is searched in full, the filters start again)."""
        self._box, self._last, self._missing = None, None, 0
        for f in (self._landmark_filter, self._pose_filter):
            if f is not None:
                f.reset()

    def update(self, frame: np.ndarray) -> Track | None:
        """The face in the next frame (H, W, 3) uint8 RGB, or None once it has been missing for more than
        ``hold_frames`` frames (or was never found)."""
        self.frame_index += 1
        found = self._locate(frame)
        if found is None:
            self._missing += 1
            if self._last is not None and self._missing <= self.settings.hold_frames:
                return replace(self._last, source="held")
            self.reset()
            return None
        face, source = found
        if self._last is None:  # a new track: the filters start from this face
            self._unit = face_size(face.landmarks)
        self._box, self._missing = np.array(face.box), 0
        time = self.frame_index / self.fps
        landmarks = face.landmarks
        if self._landmark_filter is not None:
            landmarks = self._landmark_filter(landmarks / self._unit, time) * self._unit
        pose = np.array(head_pose(landmarks, frame.shape[0]))
        if self._pose_filter is not None:
            pose = self._pose_filter(pose, time)
        self._last = Track(landmarks=landmarks, raw_landmarks=face.landmarks,
                           params=align_params(landmarks, (frame.shape[1], frame.shape[0])),
                           yaw=float(pose[0]), pitch=float(pose[1]), source=source, confidence=face.confidence)
        return self._last

    def _locate(self, frame: np.ndarray) -> tuple[Face, str] | None:
        if self._box is not None and self._since_detect + 1 < self.settings.detect_every:
            face = self._follow(frame)
            if face is not None:
                self._since_detect += 1
                return face, "follow"
        self._since_detect = 0
        face = pick_face(detect_faces(frame, max_side=self.settings.detect_side, detector=self.detector),
                         self.settings.min_confidence)
        return None if face is None else (face, "detect")

    def _follow(self, frame: np.ndarray) -> Face | None:
        """Re-detect in a square around the last box, downscaled to ``follow_side``; None when nothing is there."""
        height, width = frame.shape[:2]
        x1, y1, x2, y2 = self._box
        half = max(x2 - x1, y2 - y1) * self.settings.follow_margin / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, int(cx - half)), max(0, int(cy - half))
        right, bottom = min(width, int(math.ceil(cx + half))), min(height, int(math.ceil(cy + half)))
        if right - left < 24 or bottom - top < 24:
            return None
        scale = min(1.0, self.settings.follow_side / max(right - left, bottom - top))
        size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
        patch = Image.fromarray(frame[top:bottom, left:right]).resize(size, Image.Resampling.BILINEAR)
        fx, fy = (right - left) / size[0], (bottom - top) / size[1]
        face = pick_face(self.detector.detect(np.asarray(patch)), self.settings.min_confidence)
        if face is None:
            return None
        corners = (np.reshape(face.box, (2, 2)) + 0.5) * [fx, fy] - 0.5 + [left, top]
        return Face(box=tuple(float(v) for v in corners.ravel()), confidence=face.confidence,
                    landmarks=(face.landmarks + 0.5) * [fx, fy] - 0.5 + [left, top])
