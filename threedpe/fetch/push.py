"""``threedpe push-weights``: upload the converted weights (``.safetensors`` + ``.json``, never a pickle) and a model
card to a Hugging Face Hub model repository, for a Space to load with ``THREEDPE_HUB_REPO`` / ``THREEDPE_HUB_REVISION``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from threedpe.weights import CheckpointError
from threedpe.weights.checkpoints import read_checkpoint
from threedpe.fetch.sources import CATALOGUE, WeightFile


@dataclass
class PushPlan:
    files: list[Path]  # the converted pairs found, in upload order
    card: str  # README.md of the repository
    missing: list[str]  # catalogue files with no converted pair here


def _converted(folder: Path) -> tuple[list[tuple[WeightFile, Path, Path]], list[str]]:
    found, missing = [], []
    for item in CATALOGUE:
        if item.converted is None:
            continue
        weights, config = folder / f"{item.converted}.safetensors", folder / f"{item.converted}.json"
        if weights.is_file() and config.is_file():
            found.append((item, weights, config))
        else:
            missing.append(item.name)
    return found, missing


def model_card(repo: str, found: list[tuple[WeightFile, Path, Path]]) -> str:
    """The repository's README: what each file is, where it came from, its licence; non-commercial metadata."""
    rows = []
    for item, weights, config in found:
        source = json.loads(config.read_text(encoding="utf-8")).get("source") or item.name
        rows.append(f"| `{weights.name}` + `{config.name}` | converted from `{source}` | {item.source.describe()} | {item.licence} |")
    table = "\n".join(rows)
    return f"""---
license: other
license_name: nvidia-source-code-license-nc
license_link: https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt
tags:
- threedpe
- 3d-aware-portrait-editing
- eg3d
---
# {repo}: weights for threedpe (3DPE, ECCV 2024)

Converted copies of the released weights, in threedpe's own format (`.safetensors` tensors + `.json` config; no
pickles), written by `python -m threedpe download` / `convert` and uploaded with `python -m threedpe push-weights`.
A Space loads them with `THREEDPE_HUB_REPO={repo}` and `THREEDPE_HUB_REVISION=<commit>`.

| files | what | original source | licence |
|---|---|---|---|
{table}

**Licences.** These weights keep the licences of their sources. EG3D and everything trained from it (3DPE, Live3D) are
under the NVIDIA Source Code License-NC: non-commercial research or evaluation use only. The InstructPix2Pix model is
not copied here; threedpe loads `timbrooks/instruct-pix2pix` (CreativeML OpenRAIL-M) from the Hub.
"""


def plan_push(folder: str | os.PathLike, repo: str) -> PushPlan:
    """The files to upload from ``folder`` (each checked to load) and the model card; no network."""
    folder = Path(folder).expanduser()
    found, missing = _converted(folder)
    if not found:
        raise CheckpointError(f"no converted weights in {folder.resolve()} (3dpe.safetensors + 3dpe.json, ...): run "
                              "`python -m threedpe download` or `python -m threedpe convert <file>` first")
    for _item, weights, _config in found:
        read_checkpoint(weights)  # a broken pair is not published
    files = [path for _item, weights, config in found for path in (weights, config)]
    return PushPlan(files, model_card(repo, found), missing)


def push(plan: PushPlan, repo: str, private: bool = False, token: str | None = None) -> str:
    """Create ``repo`` if needed and commit the plan's files and card in one commit; returns the commit sha."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from threedpe.fetch.download import network_errors, one_line

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in plan.files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode("utf-8")))
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(repo, operations=operations, commit_message="threedpe weights (converted, safetensors)",
                                 repo_type="model")
    except network_errors() as error:
        raise CheckpointError(f"could not upload to the Hub repository {repo}: {one_line(error)}. Log in with "
                              "`hf auth login` (or set HF_TOKEN) with a token that can write there") from None
    return info.oid
