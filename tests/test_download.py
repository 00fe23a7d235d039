"""`threedpe download`, `doctor` and `push-weights` against a loopback server that stands in for Google Drive, plain
HTTPS and the Hugging Face Hub, serving the tiny weight set in the released formats (no internet)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import gdown
import pytest
import torch
import yaml
from gdown.download import GoogleDriveFileToDownload

from threedpe import cli
from threedpe.weights.checkpoints import load_3dpe, load_eg3d, read_checkpoint, save_official
from threedpe.weights import INSTRUCT_PIX2PIX_REVISION
from threedpe.tiny import save_tiny_weights
from threedpe.fetch import download as fetching
from threedpe.fetch.sources import EG3D_HUB_PATH, EG3D_HUB_REPO, LIVE3D_FOLDER_ID, THREEDPE_ARCHIVE

LIST_FOLDER = gdown.download_folder
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LIVE3D_FILE_ID = "1Live3dEncoderRenderLT90000StandIn"  # Drive ids are 25+ characters
PUSHED = "fedcba9876543210fedcba9876543210fedcba98"


class StandIn(ThreadingHTTPServer):
    """Serves ``drive`` (id -> bytes at ``/uc?id=``), ``hub`` (repo -> {path: bytes} at ``/<repo>/resolve/<rev>/<path>``
    and the tree/create/preupload/commit APIs). ``cut_once`` holds Drive ids whose first transfer stops half-way."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.drive: dict[str, bytes] = {}
        self.hub: dict[str, dict[str, bytes]] = {}
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self.commits: list[dict] = []
        self.confirm = False  # answer Drive ids with the large-file confirmation page first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _file(self, data: bytes, head: bool, headers: dict, cut: bool = False) -> None:
        found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(found.group(1)) if found else 0
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}
        if found:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if cut:  # announce everything, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if found else 200, data[start:], headers, head)

    def _serve(self, head: bool) -> None:
        parts = urlsplit(self.path)
        self.server.requests.append((self.command, parts.path, self.headers.get("Range")))
        if parts.path in ("/uc", "/download"):
            query = parse_qs(parts.query)
            file_id = query.get("id", [""])[0]
            if file_id not in self.server.drive:
                return self._send(404, b"not found")
            if self.server.confirm and "confirm" not in query:  # Drive's virus-scan warning page of large files
                form = (f'<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
                        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" '
                        f'value="download"><input type="hidden" name="confirm" value="t"></form>')
                return self._send(200, f"<html><body>\n{form}\n</body></html>".encode(), {"Content-Type": "text/html"})
            cut = file_id in self.server.cut_once and not self.headers.get("Range")
            self.server.cut_once.discard(file_id)
            return self._file(self.server.drive[file_id], head, {"Content-Disposition": f'attachment; filename="{file_id}"'}, cut)
        if parts.path == "/embeddedfolderview" and parse_qs(parts.query).get("id") == [LIVE3D_FOLDER_ID]:
            links = f'<a href="https://drive.google.com/file/d/{LIVE3D_FILE_ID}/view">encoder_render_LT_90000.pt</a>'
            page = f"<html><head><title>Live3D weights</title></head><body>{links}</body></html>"
            return self._send(200, page.encode(), {"Content-Type": "text/html"})
        if parts.path.startswith("/https/"):  # a plain HTTPS download
            name = parts.path[len("/https/"):]
            return self._file(self.server.drive[name], head, {}) if name in self.server.drive else self._send(404)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", parts.path)
        if tree:
            files = self.server.hub.get(tree.group(1), {})
            return self._json([{"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for path, data in files.items()])
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", unquote(parts.path))
        if resolve:
            data = self.server.hub.get(resolve.group(1), {}).get(resolve.group(3))
            if data is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            return self._file(data, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
        self._send(404, b"", {}, head)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.server.requests.append(("POST", path, None))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/api/validate-yaml":  # the model card's metadata must parse, as on the Hub
            content = json.loads(body)["content"]
            front = content.split("---\n")[1] if content.startswith("---\n") else ""
            try:
                assert isinstance(yaml.safe_load(front), dict)
            except Exception as error:
                return self._send(400, json.dumps({"errors": [{"message": str(error)}]}).encode())
            return self._json({"warnings": []})
        if path == "/api/repos/create":
            payload = json.loads(body)
            return self._json({"url": f"{self.server.url}/{payload['organization']}/{payload['name']}"})
        preupload = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
        if preupload:
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        commit = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if commit:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
            self.server.commits.append({"repo": commit.group(1), "files": files})
            return self._json({"commitUrl": f"{self.server.url}/{commit.group(1)}/commit/{PUSHED}", "commitOid": PUSHED})
        self._send(404)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, bytes]:
    """The tiny weight set in the released formats: 3dpe.pt, ffhqrebalanced512-128.pth, encoder_render_LT_90000.pt,
    and the tiny InstructPix2Pix folder's files."""
    tiny = save_tiny_weights(tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("released")
    save_official(read_checkpoint(tiny / "3dpe.safetensors"), out / "3dpe.pt")
    save_official(read_checkpoint(tiny / "encoder_render_LT_90000.safetensors"), out / "encoder_render_LT_90000.pt")
    eg3d = load_eg3d(tiny / "ffhqrebalanced512-128.safetensors")
    torch.save({"G_init_args": (), "G_init_kwargs": eg3d.init_kwargs, "G": eg3d.state_dict,
                "G_neural_rendering_resolution": eg3d.neural_rendering_resolution,
                "G_renderinig_kwargs": eg3d.rendering_kwargs}, out / "ffhqrebalanced512-128.pth")
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    text = tiny / "instruct-pix2pix"
    files.update({f"ip2p/{path.relative_to(text).as_posix()}": path.read_bytes()
                  for path in sorted(text.rglob("*")) if path.is_file()})
    return files


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"pretrained_models/{name}", data)
    return buffer.getvalue()


@pytest.fixture
def standin(released, monkeypatch, tmp_path):
    """The loopback server, serving the 3DPE archive, the Live3D folder's file and the Hub files, with the
    environment pointed at it (Drive base URL, HF_ENDPOINT, Hub online, caches in tmp_path)."""
    import huggingface_hub.constants

    server = StandIn()
    server.drive[THREEDPE_ARCHIVE.file_id] = _zip({"3dpe.pt": released["3dpe.pt"],
                                                   "ffhqrebalanced512-128.pth": released["ffhqrebalanced512-128.pth"]})
    server.drive[LIVE3D_FILE_ID] = released["encoder_render_LT_90000.pt"]
    server.hub[EG3D_HUB_REPO] = {EG3D_HUB_PATH: released["ffhqrebalanced512-128.pth"]}
    server.hub["timbrooks/instruct-pix2pix"] = {name[len("ip2p/"):]: data for name, data in released.items()
                                                 if name.startswith("ip2p/")}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("THREEDPE_DRIVE_URL", server.url)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("THREEDPE_GALLERY", str(tmp_path / "gallery"))
    # Drive folders are listed by gdown's own page parser, which needs drive.google.com: list the stand-in's one file
    # (test_drive_downloads_go_through_gdowns_google_drive_flow runs the parser).

    def listing(id, skip_download, quiet):
        assert id == LIVE3D_FOLDER_ID and skip_download
        return [GoogleDriveFileToDownload(id=LIVE3D_FILE_ID, path="encoder_render_LT_90000.pt", local_path="x")]

    monkeypatch.setattr(gdown, "download_folder", listing)
    yield server
    server.shutdown()
    server.server_close()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    """The one ``error:`` line, which ends the output (gdown's progress lines may come before it); no traceback."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


def test_download_fetches_verifies_and_converts(standin, tmp_path, capsys):
    folder = tmp_path / "weights"
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor", "eg3d", "live3d", "--accept-licences"], capsys)
    assert code == 0, err
    for stem in ("3dpe", "ffhqrebalanced512-128", "encoder_render_LT_90000"):
        assert (folder / f"{stem}.safetensors").is_file() and (folder / f"{stem}.json").is_file()
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        ["3dpe.safetensors", "3dpe.json", "ffhqrebalanced512-128.safetensors", "ffhqrebalanced512-128.json",
         "encoder_render_LT_90000.safetensors", "encoder_render_LT_90000.json", fetching.ACCEPTED])  # no pickle, no staging
    assert json.loads((folder / "3dpe.json").read_text())["source"] == "3dpe.pt"
    # the EG3D generator came out of the archive fetched for the editor: the Hub was not asked
    assert not any("/resolve/" in path for _method, path, _range in standin.requests)
    assert "Non-commercial" in out or "non-commercial" in out
    assert "3DPE's archive (ffhqrebalanced512-128.pth)" in out and "weights in" in out
    assert load_3dpe(folder / "3dpe.safetensors").encoder_state_dict


def test_download_eg3d_from_the_hub_and_text_model_snapshot(standin, tmp_path, capsys):
    folder = tmp_path / "weights"
    code, out, err = _run(["download", "--to", str(folder), "--only", "eg3d", "text", "--accept-licences"], capsys)
    assert code == 0, err
    assert load_eg3d(folder / "ffhqrebalanced512-128.safetensors").state_dict
    assert f"at commit {COMMIT}" in out
    resolved = [path for method, path, _range in standin.requests if "/resolve/" in path]
    assert any(EG3D_HUB_PATH in path for path in resolved)
    assert any(f"/resolve/{INSTRUCT_PIX2PIX_REVISION}/model_index.json" in path for path in resolved)
    assert (folder / "instruct-pix2pix" / "model_index.json").is_file()
    assert (folder / "instruct-pix2pix" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (folder / "instruct-pix2pix" / ".cache").exists() and not (folder / fetching.STAGING).exists()
    # a second run finds everything and fetches nothing
    before = len(standin.requests)
    code, out, _ = _run(["download", "--to", str(folder), "--only", "eg3d", "text"], capsys)
    assert code == 0 and len(standin.requests) == before and out.count("already there") == 2


def test_files_put_there_by_hand_are_kept_and_not_fetched(standin, released, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "3dpe.pt").write_bytes(released["3dpe.pt"])
    (folder / "ffhqrebalanced512-128.pth").write_bytes(released["ffhqrebalanced512-128.pth"])
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor", "eg3d", "--accept-licences"], capsys)
    assert code == 0, err
    assert out.count("already there") == 2 and not standin.requests
    assert (folder / "3dpe.pt").read_bytes() == released["3dpe.pt"]


def test_download_resumes_an_interrupted_transfer(standin, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "weights"
    archive_id = THREEDPE_ARCHIVE.file_id
    standin.cut_once.add(archive_id)
    monkeypatch.setattr(fetching, "RETRIES", 0)  # the dropped transfer ends this run
    code, _out, err = _run(["download", "--to", str(folder), "--only", "editor", "--accept-licences"], capsys)
    error = _error_line(err)
    assert code == 2 and error.startswith("error: could not download 3dpe.pt from Google Drive")
    assert "the next run resumes it" in error and "Manual way:" in error
    partial = list((folder / fetching.STAGING).glob("*.part"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(standin.drive[archive_id])
    assert not (folder / "3dpe.safetensors").exists()
    kept = partial[0].stat().st_size
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor"], capsys)
    assert code == 0, err
    assert ("GET", "/uc", f"bytes={kept}-") in standin.requests
    assert load_3dpe(folder / "3dpe.safetensors").encoder_state_dict and not (folder / fetching.STAGING).exists()


def test_download_retries_a_dropped_transfer_in_the_same_run(standin, tmp_path, capsys):
    folder = tmp_path / "weights"
    standin.cut_once.add(LIVE3D_FILE_ID)
    code, _out, err = _run(["download", "--to", str(folder), "--only", "live3d", "--accept-licences"], capsys)
    assert code == 0, err
    ranges = [int(r[len("bytes="):-1]) for method, path, r in standin.requests if path == "/uc" and r]
    assert len(ranges) == 1 and 0 < ranges[0] <= len(standin.drive[LIVE3D_FILE_ID]) // 2
    assert load_3dpe(folder / "encoder_render_LT_90000.safetensors").renderer_state_dict


@pytest.mark.parametrize("how", ["garbage", "missing-key"])
def test_a_corrupted_file_is_refused_and_removed(standin, released, tmp_path, capsys, how):
    folder = tmp_path / "weights"
    if how == "garbage":
        data = released["3dpe.pt"][:300] + b"\x00" * 100
    else:  # loads, but a key is missing: the strict load refuses it
        scratch = tmp_path / "scratch.pt"
        scratch.write_bytes(released["3dpe.pt"])
        checkpoint = load_3dpe(scratch)
        checkpoint.encoder_state_dict.pop(next(iter(checkpoint.encoder_state_dict)))
        save_official(checkpoint, scratch)
        data = scratch.read_bytes()
    standin.drive[THREEDPE_ARCHIVE.file_id] = _zip({"3dpe.pt": data})
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor", "--accept-licences"], capsys)
    error = _error_line(err)
    assert code == 2 and error.startswith("error: refused 3dpe.pt from Google Drive zip") and "the file was removed" in error
    assert ("missing keys" in error) if how == "missing-key" else ("corrupt" in error or "truncated" in error)
    assert sorted(path.name for path in folder.iterdir()) == [fetching.ACCEPTED]


def test_dry_run_names_every_real_source_without_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREEDPE_DRIVE_URL", "http://127.0.0.1:9")  # nothing listens there
    code, out, _ = _run(["download", "--to", str(tmp_path / "w"), "--dry-run"], capsys)
    assert code == 0
    for needle in ("1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF", "1Z6uri8pH048Qzyhu0PE3llxO5EC7ic_v",
                   "gwang-kim/datid3d-finetuned-eg3d-models", "finetuned_models/nvidia_ffhqrebalanced512-128.pkl",
                   f"timbrooks/instruct-pix2pix, revision {INSTRUCT_PIX2PIX_REVISION}",
                   "https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth", "NVIDIA Source Code License-NC",
                   "CreativeML OpenRAIL-M"):
        assert needle in out, needle
    assert not (tmp_path / "w").exists()


def test_offline_gives_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREEDPE_DRIVE_URL", "http://127.0.0.1:9")  # connection refused, as offline
    monkeypatch.setattr(fetching, "RETRIES", 0)
    folder = tmp_path / "w"
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor", "--accept-licences"], capsys)
    error = _error_line(err)
    assert code == 2 and error.startswith("error: could not download 3dpe.pt from Google Drive zip")
    assert "1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF" in error
    assert "Manual way: open https://drive.google.com/uc?id=1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF" in error
    assert sorted(path.name for path in folder.iterdir()) == [fetching.ACCEPTED]
    # the Hub offline (the suite's HF_HUB_OFFLINE=1) reads the same way
    code, _out, err = _run(["download", "--to", str(folder), "--only", "eg3d"], capsys)
    assert code == 2 and _error_line(err).startswith("error: could not download ffhqrebalanced512-128.pkl from Hugging Face Hub")


def test_licences_must_be_accepted(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fetching, "terminal_prompt", lambda: None)
    code, _out, err = _run(["download", "--to", str(tmp_path / "w"), "--only", "editor"], capsys)
    assert code == 2 and "--accept-licences" in err
    answers = iter(["n"])
    monkeypatch.setattr(fetching, "terminal_prompt", lambda: lambda prompt: next(answers))
    code, out, err = _run(["download", "--to", str(tmp_path / "w"), "--only", "editor"], capsys)
    assert code == 2 and "not accepted" in err and "NVIDIA Source Code License-NC" in out


def test_push_weights_uploads_safetensors_and_a_model_card(standin, tmp_path, capsys):
    folder = save_tiny_weights(tmp_path / "tiny")
    (folder / "3dpe.pt").write_bytes(b"a pickle that must not be uploaded")
    code, out, err = _run(["push-weights", "--repo", "someone/threedpe-weights", "--weights", str(folder), "--dry-run"], capsys)
    assert code == 0 and "3dpe.safetensors" in out and not standin.commits
    code, out, err = _run(["push-weights", "--repo", "someone/threedpe-weights", "--weights", str(folder)], capsys)
    assert code == 0, err
    assert f"THREEDPE_HUB_REPO=someone/threedpe-weights\nTHREEDPE_HUB_REVISION={PUSHED}" in out
    (commit,) = standin.commits
    assert commit["repo"] == "someone/threedpe-weights"
    assert sorted(commit["files"]) == sorted(
        ["3dpe.safetensors", "3dpe.json", "ffhqrebalanced512-128.safetensors", "ffhqrebalanced512-128.json",
         "encoder_render_LT_90000.safetensors", "encoder_render_LT_90000.json", "README.md"])
    assert commit["files"]["3dpe.safetensors"] == (folder / "3dpe.safetensors").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert "NVIDIA Source Code License-NC" in card and "1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF" in card
    assert ("POST", "/api/repos/create", None) in standin.requests


def test_doctor_reports_missing_and_present_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("THREEDPE_GALLERY", str(tmp_path / "gallery"))
    empty = tmp_path / "empty"
    code, out, _ = _run(["doctor", "--weights", str(empty)], capsys)
    assert code == 1
    assert re.search(r"\[--\] 3dpe.pt \(editor\): missing; source: Google Drive zip .*1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF", out)
    assert "editing cannot run" in out and "torch " in out and "gradio " in out and "free disk" in out
    folder = save_tiny_weights(tmp_path / "tiny")
    code, out, _ = _run(["doctor", "--weights", str(folder)], capsys)
    assert code == 0, out
    assert re.search(r"\[ok\] 3dpe.pt \(editor\): .*3dpe.safetensors \(loads\)", out)
    assert re.search(r"\[--\] alex_lin.pth \(lpips\): missing; source: https://raw.githubusercontent.com", out)
    assert "[ok] text model: local folder" in out and "[ok] cache:" in out and "editing can run" in out
    (folder / "3dpe.safetensors").write_bytes(b"broken")
    code, out, _ = _run(["doctor", "--weights", str(folder)], capsys)
    assert code == 1 and re.search(r"\[--\] 3dpe.pt \(editor\): .*does not load", out)


def test_first_start_downloads_what_editing_needs_but_never_on_a_space(standin, tmp_path, monkeypatch):
    from threedpe.pipeline import PortraitEditor

    folder = tmp_path / "weights"
    monkeypatch.setenv("SPACE_ID", "someone/threedpe")
    assert not fetching.first_start(folder, requested=True) and not folder.exists() and not standin.requests
    assert "push-weights" in fetching.missing_weights_hint() and "THREEDPE_HUB_REVISION" in fetching.missing_weights_hint()
    monkeypatch.delenv("SPACE_ID")
    assert "python -m threedpe download" in fetching.missing_weights_hint()
    monkeypatch.setattr(fetching, "terminal_prompt", lambda: None)  # no terminal: nothing is asked or fetched
    assert not fetching.first_start(folder)
    with pytest.raises(fetching.WeightDownloadError, match="--accept-licences"):  # asked for, licences not accepted
        PortraitEditor.from_pretrained(folder, download=True)
    answers = iter(["y", "yes"])  # the download offer, then the licences
    monkeypatch.setattr(fetching, "terminal_prompt", lambda: lambda prompt: next(answers))
    assert fetching.first_start(folder)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        ["3dpe.safetensors", "3dpe.json", "ffhqrebalanced512-128.safetensors", "ffhqrebalanced512-128.json",
         "instruct-pix2pix", fetching.ACCEPTED])
    editor = PortraitEditor.from_pretrained(folder, download=True)  # all there: nothing more is fetched
    assert editor.text_model == folder / "instruct-pix2pix"


def test_lpips_files_over_https_are_verified_together(standin, tmp_path, capsys, monkeypatch):
    import dataclasses

    from threedpe.models.perceptual import LPIPS
    from threedpe.fetch import sources

    state = LPIPS().state_dict()
    for name, tensors in (("alexnet-owt-4df8aa71.pth", {k: v for k, v in state.items() if k.startswith("features.")}),
                          ("alex_lin.pth", {f"lin{k.split('.')[1]}.model.1.weight": v for k, v in state.items()
                                            if k.startswith("lin.")})):
        buffer = io.BytesIO()
        torch.save({k: torch.randn_like(v) for k, v in tensors.items()}, buffer)
        standin.drive[name] = buffer.getvalue()
    catalogue = tuple(dataclasses.replace(item, source=sources.HttpsFile(f"{standin.url}/https/{item.name}"))
                      if item.group == "lpips" else item for item in sources.CATALOGUE)
    monkeypatch.setattr(sources, "CATALOGUE", catalogue)
    folder = tmp_path / "weights"
    code, out, err = _run(["download", "--to", str(folder), "--only", "lpips", "--accept-licences"], capsys)
    assert code == 0, err
    LPIPS.from_files(folder / "alexnet-owt-4df8aa71.pth", folder / "alex_lin.pth")
    assert sorted(path.name for path in folder.iterdir()) == ["LICENCES-ACCEPTED.txt", "alex_lin.pth", "alexnet-owt-4df8aa71.pth"]
    # a head of the wrong shape is refused by the strict load together with its partner
    bad = torch.load(io.BytesIO(standin.drive["alex_lin.pth"]))
    bad["lin0.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    buffer = io.BytesIO()
    torch.save(bad, buffer)
    standin.drive["alex_lin.pth"] = buffer.getvalue()
    (folder / "alex_lin.pth").unlink()
    code, out, err = _run(["download", "--to", str(folder), "--only", "lpips"], capsys)
    assert code == 2 and "shape mismatches" in _error_line(err) and not (folder / "alex_lin.pth").exists()


def test_drive_downloads_go_through_gdowns_google_drive_flow(standin, tmp_path, capsys, monkeypatch):
    """Without THREEDPE_DRIVE_URL the real Drive addresses are used: gdown's session is routed to the stand-in, which
    answers with Drive's large-file confirmation page first and lists the Live3D folder, as drive.google.com does."""
    import requests

    class ToStandIn(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            parts = urlsplit(request.url)
            assert parts.hostname in ("drive.google.com", "drive.usercontent.google.com"), request.url
            request.url = f"{standin.url}{parts.path}?{parts.query}"
            return super().send(request, **kwargs)

    def session():
        routed = requests.Session()
        routed.mount("https://", ToStandIn())
        return routed

    monkeypatch.delenv("THREEDPE_DRIVE_URL")
    monkeypatch.setattr(requests, "session", session)
    monkeypatch.setattr(gdown, "download_folder", LIST_FOLDER)
    monkeypatch.setattr(sys.modules["gdown.download"], "DEFAULT_COOKIES_FILE", str(tmp_path / "gdown-cookies.txt"))
    standin.confirm = True
    folder = tmp_path / "weights"
    code, out, err = _run(["download", "--to", str(folder), "--only", "editor", "live3d", "--accept-licences"], capsys)
    assert code == 0, err
    assert [path for _method, path, _range in standin.requests] == ["/uc", "/download", "/embeddedfolderview", "/uc",
                                                                     "/download"]
    assert load_3dpe(folder / "3dpe.safetensors").encoder_state_dict
    assert load_3dpe(folder / "encoder_render_LT_90000.safetensors").renderer_state_dict


def test_the_app_downloads_at_first_start_with_download_and_never_on_a_space(standin, tmp_path, capsys, monkeypatch):
    import app
    from threedpe.pipeline import PortraitEditor

    launched = []
    logger = logging.getLogger("threedpe")
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # main() sets up logging for a server
    monkeypatch.setattr(logger, "setLevel", lambda level: None)
    monkeypatch.setattr(app, "build_demo", lambda editor, text_error, gallery: (editor, text_error))
    monkeypatch.setattr(app, "launch", lambda demo, gallery, **kwargs: launched.append(demo))
    monkeypatch.setattr(fetching, "terminal_prompt", lambda: None)  # a server: no terminal
    folder = tmp_path / "weights"
    argv = ["app.py", "--weights", str(folder), "--download", "--gallery", str(tmp_path / "gallery")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("SPACE_ID", "someone/threedpe")
    app.main()
    assert not standin.requests and "editing is disabled" in capsys.readouterr().err
    monkeypatch.delenv("SPACE_ID")
    app.main()  # no terminal to accept the licences in
    assert not standin.requests and "--accept-licences" in capsys.readouterr().err and not folder.exists()
    folder.mkdir()
    (folder / fetching.ACCEPTED).write_text("accepted earlier\n")
    app.main()
    editor, text_error = launched[-1]
    assert isinstance(editor, PortraitEditor) and text_error is None, capsys.readouterr().err
    assert editor.text_model == folder / "instruct-pix2pix"
