"""What the app tells visitors, as Markdown without any UI: why editing is off, the weights notice, the seconds per
stage, an opened gallery edit; every message free of the server's absolute paths."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Mapping

from threedpe.weights import CheckpointError, MissingWeightsError
from threedpe.gallery import Record
from threedpe.pipeline import PortraitEditor

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"`()]+[/\\])+([^\s/\\'\"`()]*)")


def public_message(text: str) -> str:
    """``text`` with every absolute path shortened to its last part: web visitors never see the server's layout
    (the full message goes to the server log)."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "…", text)


def disabled_reason(error: CheckpointError) -> str:
    """One line for visitors saying why editing is off (no server paths)."""
    if isinstance(error, MissingWeightsError) and error.filename:
        return f"Editing is disabled: the weight file `{error.filename}` is not installed on this server."
    return f"Editing is disabled: the weights could not be loaded ({public_message(str(error))})."


def folder_name(error: CheckpointError) -> str:
    """The weight folder that ``error`` looked in, by its name alone (``checkpoints/``, ``tiny/``; never the server's
    path to it), or "the weight folder" when it is not known."""
    folder = getattr(error, "folder", None)
    name = Path(folder).expanduser().absolute().name if folder is not None else ""
    return f"`{name}/`" if name else "the weight folder"


def weights_notice(editor: PortraitEditor | CheckpointError, text_error: str | None = None) -> str:
    """Markdown telling the visitor what the loaded weights are: missing (and how to get them), untrained, or fine.
    It names files and the weight folder by their names, never by the server's absolute paths."""
    if isinstance(editor, CheckpointError):
        return (f"### ⚠️ {disabled_reason(editor)}\n"
                f"Whoever runs this app can put the released files in {folder_name(editor)}, the weight folder it "
                "was started with (sources and licences: `checkpoints/README.md`), or start it with "
                "`python app.py --weights DIR`. To try the interface without downloads: "
                "`python -m threedpe tiny-weights DIR` writes an untrained set.")
    notes = []
    if editor.untrained:
        notes.append("### ⚠️ Untrained weights\nThis app runs on randomly initialised (untrained) weights: the "
                     "pipeline works end to end, but every output is noise. Load the released 3DPE weights for "
                     "real edits.")
    if text_error:
        notes.append(f"**{text_error}**")
    return "\n\n".join(notes)



STAGE_LABELS = {"align": "align", "reference": "reference", "encode": "encode", "render": "render (3 views + depth)",
                "video": "orbit video", "mesh": "mesh"}


SETTING_LABELS = {"steps": "InstructPix2Pix steps", "text_guidance": "text guidance",
                  "image_guidance": "image guidance", "resolution": "2D edit resolution", "seed": "seed",
                  "strength": "edit strength"}


def timings_line(timings: Mapping[str, float]) -> str:
    """"⏱️ align **0.12 s** · ..." for the stages in ``timings`` (seconds), in pipeline order; "" for none."""
    parts = [f"{label} **{timings[key]:.2f} s**" for key, label in STAGE_LABELS.items() if key in timings]
    return "⏱️ " + " · ".join(parts) if parts else ""



def record_markdown(record: Record, link: str, anchor_labels: Mapping[str, str] | None = None) -> str:
    """What an opened gallery edit says: the kind of edit with its instruction (and the portrait it was applied to) or
    reference, the style, the settings the person chose (named as on the page), the seconds each stage took, the date
    and the link. ``anchor_labels``: anchor names -> labels (a name without one shows as it is)."""
    settings = dict(record.settings)
    clip = settings.pop("clip", False)
    if record.instruction is not None:
        lines = [f"### {'Clip' if clip else 'Text'} edit: “{record.instruction}”"]
        anchor, own_photo = settings.pop("anchor", None), settings.pop("own_photo", False)
        if own_photo:
            lines.append("🧑 The instruction was applied to the photo itself.")
        elif anchor is not None:
            label = (anchor_labels or {}).get(str(anchor), anchor)
            lines.append(f"🧑 The instruction was applied to the anchor portrait **{label}**, which then served as "
                         "the style reference.")
    else:
        lines = [f"### {'Clip' if clip else 'Reference'} edit"]
        aligned = settings.pop("align_reference", False)
        lines.append("In the style of the reference image below " + (
            "(its face was detected and aligned first)." if aligned else "(used as an aligned portrait)."))
    if clip:
        lines.insert(1, "🎬 A video clip edited frame by frame: the video plays it.")
    if record.style:
        lines.append(f"🎨 With the customised style **{record.style}**.")
    page_order = list(SETTING_LABELS)  # the page's settings in its order, then any others
    order = sorted(settings, key=lambda key: page_order.index(key) if key in page_order else len(page_order))
    chosen = [f"{SETTING_LABELS.get(key, key.replace('_', ' '))} {settings[key]}" for key in order
              if settings[key] is not None]
    if chosen:
        lines.append("Settings: " + " · ".join(chosen))
    timings = timings_line(record.timings)
    if timings:
        lines.append(timings)
    lines.append(f"Published {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(record.created))} · "
                 f"[permalink]({link})")
    return "\n\n".join(lines)

