"""What a newcomer and a Space build rely on: pinned versions, declared dependencies, the README's Python snippet
running as written (on tiny weights, CPU), and a quiet start."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}  # hub-docs spaces-zerogpu.md


def requirements() -> dict[str, str]:
    """Package name -> version spec of requirements.txt."""
    specs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.match(r"[A-Za-z0-9_.-]+", line).group(0)
            specs[name.lower().replace("_", "-")] = line[len(name):]
    return specs


def test_the_space_pins_a_zerogpu_torch_and_the_front_matter_gradio():
    specs = requirements()
    assert specs["torch"].startswith("==") and specs["torch"][2:] in ZEROGPU_TORCH, specs["torch"]
    front_matter = (ROOT / "README.md").read_text().split("---")[1]
    sdk_version = re.search(r"^sdk_version:\s*(\S+)", front_matter, re.M).group(1)
    assert specs["gradio"] == f"=={sdk_version}"
    assert re.search(r'^python_version:\s*"3\.(10|12)"', front_matter, re.M)


def test_pyproject_declares_the_same_runtime_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-") for dep in project["dependencies"]}
    assert declared == set(requirements())
    assert project["requires-python"] == ">=3.10" and "version" in project["dynamic"]


def test_ci_installs_everything_but_the_torch_line_and_fails_on_skips():
    script = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in script and "grep -vE '^torch" in script and "export CI=1" in script
    assert "chromium" in script and "python3 -m pytest -q -ra" in script


def test_the_readme_python_snippet_runs_as_written(tiny_weights, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(tiny_weights, tmp_path / "checkpoints")
    shutil.copy(ROOT / "examples" / "astronaut.jpg", tmp_path / "me.jpg")
    shutil.copy(ROOT / "examples" / "anchors" / "astronaut_flip.png", tmp_path / "style.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    exec(compile(code, "README.md", "exec"), {})
    for name in ("views.png", "view.png", "depth.png", "orbit.mp4", "head.glb", "head.ply"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert Image.open(tmp_path / "views.png").width == 3 * Image.open(tmp_path / "view.png").width


def test_import_is_light_and_exports_the_public_api():
    code = ("import sys, threedpe; assert 'torch' not in sys.modules, 'import threedpe pulled torch'; "
            "print(threedpe.__version__); threedpe.PortraitEditor; threedpe.USER_ERRORS")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", result.stdout)


def test_start_is_quiet_about_torchvision(tiny_weights):
    """transformers notes that its image processors fall back to PIL without torchvision: not a user's concern."""
    code = ("from threedpe.diffusion import InstructPix2PixEditor; "
            f"InstructPix2PixEditor.from_pretrained({str(tiny_weights / 'instruct-pix2pix')!r}, device='cpu')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "torchvision" not in result.stderr, result.stderr
