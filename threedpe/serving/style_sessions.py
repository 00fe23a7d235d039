"""A visitor's customisation between GPU calls, as CPU data: the training samples, the fine-tune's state, curves
and snapshots (:class:`StyleSession`), what a fine-tune reports after each step (:class:`TuneUpdate`), the fine-tunes
kept in memory between calls off ZeroGPU (:class:`KeptTrainers`), and how a customisation is shown (tiles, status
lines, the loss table)."""
from __future__ import annotations

import re
import shutil
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from PIL import Image

from threedpe.training.customize import CustomizeConfig, Snapshot, StyleTrainer
from threedpe.training.samples import StyleSample, photo_pairs, usable
from threedpe.styles import Style

SAMPLES_PER_CALL, TUNE_STEPS_PER_CALL = 2, 10  # customisation work per GPU call (ZeroGPU quotas, visible progress)
KEPT_TRAINERS = 4  # off ZeroGPU: fine-tunes kept between calls (one per browser session, the least recent dropped)


@dataclass(frozen=True)
class TuneUpdate:
    """What a fine-tune reports after each step (small and picklable: ZeroGPU ships each from its worker): the loss
    curves so far, the held-out snapshot that step took, and, in a call's last update only, the fine-tune's
    ``state`` and ``style``."""

    curve: list  # (step, seconds, training loss)
    held_out_curve: list  # (step, seconds, held-out loss)
    snapshot: Snapshot | None = None
    state: dict | None = None
    style: Style | None = None


@dataclass
class StyleSession:
    """A visitor's customisation as CPU data (kept in the session between GPU calls): the training samples and what
    produced them, the fine-tune's settings and state, its loss curves and snapshots, the style it made so far and
    the style's display name. ``id`` names this customisation (new pairs or an uploaded style start another)."""

    samples: list[StyleSample]
    source: dict
    name: str
    config: CustomizeConfig = field(default_factory=CustomizeConfig)
    state: dict | None = None
    curve: list = field(default_factory=list)  # (step, seconds, training loss)
    held_out_curve: list = field(default_factory=list)  # (step, seconds, held-out loss)
    snapshots: list[Snapshot] = field(default_factory=list)
    style: Style | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def steps(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def reference(self) -> Image.Image:
        """An image in the style (the held-out sample's edit): the reference "Use this style" edits with."""
        return usable(self.samples)[-1].after

    def advanced(self, update: TuneUpdate) -> StyleSession:
        """This session with a fine-tune's update: its curves, its snapshot added, its state and style if it has
        them."""
        return replace(self, curve=update.curve, held_out_curve=update.held_out_curve,
                       snapshots=[*self.snapshots, update.snapshot] if update.snapshot else self.snapshots,
                       state=self.state if update.state is None else update.state,
                       style=self.style if update.style is None else update.style)


def sample_tiles(samples: list[StyleSample]) -> list[tuple[Image.Image, str]]:
    """Gallery tiles of training samples: each edited image, captioned with its name or why it was dropped."""
    return [(sample.after, sample.name if sample.failure is None else f"{sample.name}: dropped, {sample.failure}")
            for sample in samples]


def photo_samples(before: list[str], after: list[str], folder: Path) -> list[StyleSample]:
    """The visitor's own (before, after) photos, matched by file name, as training samples (copied into
    ``folder``'s ``before/`` and ``after/``, then aligned: one crop for both photos of a pair)."""
    shutil.rmtree(folder, ignore_errors=True)
    for side, paths in (("before", before), ("after", after)):
        (folder / side).mkdir(parents=True)
        for path in paths or []:
            shutil.copy(path, folder / side / Path(path).name)
    return photo_pairs(folder)


def snapshot_tiles(session: StyleSession) -> list[tuple[Image.Image, str]]:
    """Gallery tiles of the held-out previews: the image, when it was taken and its held-out loss."""
    return [(shot.image, f"{shot.due} · step {shot.step} · {shot.seconds:.0f} s · loss {shot.loss:.4f}")
            for shot in session.snapshots]


def style_status(session: StyleSession) -> str:
    """One line about a fine-tune: steps, seconds, held-out loss from start to now."""
    if not session.held_out_curve:
        return "No fine-tuning yet."
    (_, _, start), (step, seconds, now) = session.held_out_curve[0], session.held_out_curve[-1]
    return (f"🎨 Style **{session.name}**: {step} steps in {seconds:.1f} s of training; held-out loss {start:.4f} → "
            f"{now:.4f}. Download the style file, or use it below.")


def tuning_status(session: StyleSession, target: int) -> str:
    """One line while a fine-tune runs (after a step): the step reached of ``target``, its training loss, the
    training time."""
    step, seconds, loss = session.curve[-1]
    return (f"⏳ Fine-tuning **{session.name}**: step {step} of {target} · training loss {loss:.4f} · "
            f"{seconds:.1f} s of training")


def slug(text: str) -> str:
    """A file-name-safe short form of ``text`` (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "style"


def curve_table(session: StyleSession) -> pd.DataFrame:
    """The loss curves for a line plot: columns ``step``, ``loss`` and ``curve`` (training / held-out)."""
    points = [(step, loss, "training") for step, _, loss in session.curve]
    points += [(step, loss, "held-out") for step, _, loss in session.held_out_curve]
    return pd.DataFrame(points, columns=["step", "loss", "curve"])



class KeptTrainers:
    """Fine-tunes kept in memory between calls, at most ``limit``, one per owner (a browser session), the least
    recently kept dropped first; none on ZeroGPU, where each call rebuilds its trainer from the session's state."""

    def __init__(self, limit: int = KEPT_TRAINERS):
        self.limit = limit
        self._kept: OrderedDict[str, tuple[str, StyleTrainer]] = OrderedDict()  # owner -> (StyleSession.id, ...)

    def keep(self, owner: str, session: StyleSession, trainer: StyleTrainer) -> None:
        if self.limit <= 0:
            return
        self._kept[owner] = (session.id, trainer)
        self._kept.move_to_end(owner)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def take(self, owner: str | None, session: StyleSession | None = None) -> StyleTrainer | None:
        """Take out (while it trains) ``owner``'s kept trainer; returned only when it is at ``session``'s last step
        (a fine-tune with a state), else dropped."""
        kept = self._kept.pop(owner, None) if owner else None
        if kept is None or session is None or kept[0] != session.id or session.state is None \
                or kept[1].step != session.steps:
            return None
        return kept[1]

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, owner: str) -> bool:
        return owner in self._kept
