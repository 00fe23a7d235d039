"""The bad-input matrix: each odd or broken input, through the pipeline, the CLI and the app's API, gets a clear
message (asserted text), never a traceback, and the worker serves the next request. Runs on tiny weights."""
from __future__ import annotations

import io
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw
from skimage import data

from tests.app_server import AppServer, app_server
from threedpe.cli import main
from threedpe.pipeline import USER_ERRORS, PortraitEditor

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"
REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "anchors" / "astronaut_flip.png"
CHANNELS = ("pipeline", "cli", "app")


@dataclass(frozen=True)
class Case:
    """One row: what is sent (photo/reference files, an instruction, or a weight folder) and what must come back:
    an error whose message holds ``expect``, or (``ok``) a finished edit whose notes hold ``expect`` (if given)."""

    name: str
    photo: str = "astronaut"
    reference: str | None = "reference"
    prompt: str | None = None
    weights: str | None = None  # a broken weight folder (pipeline and CLI only: the app loads weights at start-up)
    expect: str = ""
    ok: bool = False
    channels: tuple[str, ...] = field(default=CHANNELS)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def build_inputs(folder: Path, tiny_weights: Path) -> dict[str, Path]:
    """Every input file of the matrix, by name."""
    astronaut = Image.fromarray(data.astronaut())
    png_bytes = io.BytesIO()
    astronaut.save(png_bytes, format="PNG")
    jpeg_bytes = io.BytesIO()
    astronaut.save(jpeg_bytes, format="JPEG")
    files = {"astronaut": PHOTO, "reference": REFERENCE}

    def raw(name: str, content: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(content)

    raw("not_an_image.png", b"<html>this is a web page, not a photo</html>")
    raw("truncated.png", png_bytes.getvalue()[: len(png_bytes.getvalue()) // 3])
    raw("truncated.jpg", jpeg_bytes.getvalue()[: len(jpeg_bytes.getvalue()) // 3])
    raw("empty.jpg", b"")
    files["one_pixel"] = _save(Image.new("RGB", (1, 1), (200, 150, 120)), folder / "one_pixel.png")
    files["sixteen"] = _save(astronaut.resize((16, 16)), folder / "sixteen.png")
    bomb = Image.new("1", (1, 1))
    bomb_bytes = io.BytesIO()
    bomb.save(bomb_bytes, format="PNG")
    header = bytearray(bomb_bytes.getvalue())  # IHDR width/height at bytes 16..24: claim 100000 x 100000
    header[16:24] = (100_000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    raw("bomb.png", bytes(header))
    frames = [astronaut, astronaut.rotate(10), astronaut.rotate(20)]
    files["animated"] = _save(frames[0], folder / "animated.gif", save_all=True, append_images=frames[1:])
    files["multipage"] = _save(frames[0], folder / "pages.tiff", save_all=True, append_images=frames[1:])
    sixteen_bit = (np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257)
    files["png16"] = _save(Image.fromarray(sixteen_bit), folder / "sixteen_bit.png")
    files["cmyk"] = _save(astronaut.convert("CMYK"), folder / "cmyk.jpg")
    transparent = astronaut.convert("RGBA")
    transparent.putalpha(0)
    files["transparent"] = _save(transparent, folder / "transparent.png")
    files["gray"] = _save(astronaut.convert("L"), folder / "gray.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held sideways: the stored pixels are rotated, the tag turns them back
    files["exif_rotated"] = _save(astronaut.rotate(90, expand=True), folder / "rotated.jpg", exif=exif.tobytes())
    files["no_face"] = _save(Image.fromarray(data.coffee()), folder / "coffee.png")
    crop = Image.open(REFERENCE).resize((256, 256))
    five = Image.new("RGB", (5 * 256, 256), "white")
    for index in range(5):
        five.paste(crop, (index * 256, 0))
    files["five_faces"] = _save(five, folder / "five.png")
    files["border"] = _save(astronaut.crop((200, 0, 512, 512)), folder / "border.png")
    cartoon = Image.new("RGB", (400, 400), (250, 220, 180))
    draw = ImageDraw.Draw(cartoon)
    draw.ellipse((60, 40, 340, 360), fill=(255, 205, 150), outline="black", width=4)
    draw.ellipse((130, 140, 170, 180), fill="black")
    draw.ellipse((230, 140, 270, 180), fill="black")
    draw.arc((140, 240, 260, 310), 0, 180, fill="red", width=8)
    files["cartoon"] = _save(cartoon, folder / "cartoon.png")
    files["tiny_reference"] = _save(astronaut.resize((8, 8)), folder / "tiny_reference.png")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    files["noise_reference"] = _save(Image.fromarray(noise), folder / "noise.png")
    # weight folders
    files["no_weights"] = folder / "no-weights"
    files["no_weights"].mkdir()
    truncated = folder / "truncated-weights"
    shutil.copytree(tiny_weights, truncated)
    blob = (truncated / "3dpe.safetensors").read_bytes()
    (truncated / "3dpe.safetensors").write_bytes(blob[: len(blob) // 2])
    files["truncated_weights"] = truncated
    other = folder / "other-model"
    other.mkdir()
    shutil.copy(tiny_weights / "ffhqrebalanced512-128.safetensors", other / "3dpe.safetensors")
    shutil.copy(tiny_weights / "ffhqrebalanced512-128.json", other / "3dpe.json")
    files["other_model"] = other
    return files


CASES = [
    Case("non-image bytes with an image extension", photo="not_an_image.png", expect="not an image"),
    Case("truncated PNG", photo="truncated.png", expect="damaged or truncated"),
    Case("truncated JPEG", photo="truncated.jpg", expect="damaged or truncated"),
    Case("zero-byte file", photo="empty.jpg", expect="empty"),
    Case("1x1 image", photo="one_pixel", expect="only 1×1 pixels"),
    Case("16x16 image", photo="sixteen", expect="only 16×16 pixels"),
    Case("decompression bomb", photo="bomb.png", expect="megapixels"),
    Case("animated GIF", photo="animated", ok=True, expect="the first one was used"),
    Case("multi-page TIFF", photo="multipage", ok=True, expect="the first one was used"),
    Case("16-bit PNG", photo="png16", ok=True),
    Case("CMYK JPEG", photo="cmyk", ok=True),
    Case("RGBA with a transparent face", photo="transparent", expect="No face found"),
    Case("grayscale photo", photo="gray", ok=True),
    Case("EXIF-rotated photo", photo="exif_rotated", ok=True),
    Case("no face", photo="no_face", expect="No face found"),
    Case("five faces", photo="five_faces", ok=True, expect="5 faces found; the largest one was used"),
    Case("face at the border", photo="border", ok=True, expect="close to the image border"),
    Case("cartoon face", photo="cartoon", expect="No face found"),
    Case("reference that is not an image", reference="not_an_image.png", expect="not an image"),
    Case("8x8 reference", reference="tiny_reference", ok=True, expect="only 8×8 pixels"),
    Case("noise reference", reference="noise_reference", ok=True, expect="looks like noise"),
    Case("empty instruction", reference=None, prompt="", expect="instruction is empty"),
    Case("whitespace instruction", reference=None, prompt=" \t\n ", expect="instruction is empty"),
    Case("10 000-character instruction", reference=None, prompt="make it golden " * 667, expect="CLIP tokens long"),
    Case("non-Latin instruction", reference=None, prompt="把她变成一座铜像", ok=True),
    Case("emoji instruction", reference=None, prompt="make it 🔥🗿 please", ok=True),
    Case("missing weights", weights="no_weights", expect="missing weight file '3dpe.pt'", channels=("pipeline", "cli")),
    Case("truncated safetensors", weights="truncated_weights", expect="truncated or corrupt",
         channels=("pipeline", "cli")),
    Case("a checkpoint of another model", weights="other_model", expect="EG3D generator checkpoint",
         channels=("pipeline", "cli")),
]
assert len(CASES) >= 25


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_weights) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("bad-inputs"), tiny_weights)


@pytest.fixture(scope="module")
def editor(tiny_weights, tmp_path_factory) -> PortraitEditor:
    return PortraitEditor.from_pretrained(tiny_weights, cache_dir=tmp_path_factory.mktemp("bad-inputs-cache"))


def file_of(inputs: dict[str, Path], name: str | None) -> Path | None:
    return None if name is None else inputs[name]


def run_pipeline(case: Case, inputs: dict[str, Path], editor: PortraitEditor) -> tuple[bool, str]:
    try:
        if case.weights:
            PortraitEditor.from_pretrained(inputs[case.weights])
            return True, ""
        result = editor(file_of(inputs, case.photo), reference=file_of(inputs, case.reference), prompt=case.prompt)
    except USER_ERRORS as error:
        return False, str(error)
    return True, "\n".join(result.warnings)


def run_cli(case: Case, inputs: dict[str, Path], tiny_weights: Path, out: Path, capsys) -> tuple[bool, str]:
    argv = ["edit", "--weights", str(inputs[case.weights] if case.weights else tiny_weights),
            "--input", str(file_of(inputs, case.photo)), "--out", str(out)]
    argv += ["--prompt", case.prompt] if case.prompt is not None else ["--reference", str(file_of(inputs, case.reference))]
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code:  # one line "error: ..." (after any progress bars), exit status 2
        assert code == 2 and captured.err.splitlines()[-1].startswith("error: "), captured.err
        assert sum(line.startswith("error: ") for line in captured.err.splitlines()) == 1, captured.err
    return code == 0, captured.err


def run_app(case: Case, inputs: dict[str, Path], client: Client) -> tuple[bool, str]:
    try:
        if case.prompt is not None:
            outputs = client.predict(handle_file(file_of(inputs, case.photo)), case.prompt, api_name="/edit_text")
        else:
            outputs = client.predict(handle_file(file_of(inputs, case.photo)),
                                     handle_file(file_of(inputs, case.reference)), False, api_name="/edit_reference")
    except AppError as error:
        assert "Traceback" not in str(error)
        return False, str(error)
    return True, outputs[5]  # the status line (after aligned, reference, strip, view, depth)


@pytest.mark.parametrize("channel", CHANNELS)
def test_bad_input_matrix(channel, inputs, editor, tiny_weights, tmp_path, capsys):
    client = None
    if channel == "app":
        server: AppServer = app_server()
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    rows = []
    for case in CASES:
        if channel not in case.channels:
            continue
        if channel == "pipeline":
            ok, message = run_pipeline(case, inputs, editor)
        elif channel == "cli":
            ok, message = run_cli(case, inputs, tiny_weights, tmp_path / "out", capsys)
        else:
            ok, message = run_app(case, inputs, client)
        rows.append(f"{case.name:40s} {'ok   ' if ok else 'error'} {message.splitlines()[0][:90] if message else ''}")
        assert ok == case.ok, f"{channel} / {case.name}: {'finished' if ok else 'failed'}: {message}"
        assert case.expect in message, f"{channel} / {case.name}: {case.expect!r} not in {message!r}"
    with capsys.disabled():
        print(f"\nbad-input matrix through the {channel}: {len(rows)} cases\n" + "\n".join(rows))
    # the worker serves the next request
    if channel == "app":
        assert "encode" in run_app(Case("after the matrix"), inputs, client)[1]
    elif channel == "pipeline":
        assert editor(PHOTO, reference=REFERENCE).planes.isfinite().all()
