"""The 3DPE dataset layout: written, read back from a folder and a zip, and malformed datasets refused with a
message that names the file."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threedpe import cameras
from threedpe.training.data import DatasetError, DatasetWriter, EditingDataset, edited_path, item_path

SIDE = 64  # small images keep the tests fast; the layout does not depend on the size


def picture(value: int) -> Image.Image:
    return Image.fromarray(np.full((SIDE, SIDE, 3), value, dtype=np.uint8))


def write_dataset(root: Path, count: int = 4, styles: tuple[str, ...] = ("bronze statue",)) -> Path:
    writer = DatasetWriter(root)
    labels = {}
    for index in range(count):
        path = writer.add(index, picture(10 * index), {style: picture(200 - 10 * index) for style in styles})
        labels[path] = cameras.camera(*cameras.from_degrees(5.0 * index, 0.0))[0].numpy()
    writer.write_labels(labels)
    return root


def test_written_dataset_reads_back_from_a_folder_and_a_zip(tmp_path):
    root = write_dataset(tmp_path / "data")
    assert (root / "00000" / "img00000002.png").is_file()
    assert (root / "00000_bronze statue" / "img00000002.png").is_file()
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(root).as_posix())
    for source in (root, archive):
        dataset = EditingDataset(source, resolution=SIDE)
        assert len(dataset) == 4
        item = dataset[2]
        assert item["path"] == "00000/img00000002.png" and item["style"] == "bronze statue"
        assert item["input"].shape == (3, 512, 512) and item["reference"].shape == (3, 224, 224)
        assert torch.allclose(item["input"], torch.full_like(item["input"], 20 / 255 * 2 - 1), atol=1e-6)
        assert torch.allclose(item["target"], torch.full_like(item["target"], 180 / 255 * 2 - 1), atol=1e-6)
        assert item["reference_path"].startswith("00000_bronze statue/") and not item["reference_path"].endswith(
            "img00000002.png")  # another identity's edit
        expected = cameras.camera(*cameras.from_degrees(10.0, 0.0))[0]
        assert torch.allclose(item["camera"], expected, atol=1e-6)


def test_draws_depend_on_seed_epoch_and_index_only(tmp_path):
    root = write_dataset(tmp_path / "data", count=6, styles=("a", "b"))
    first, again = EditingDataset(root, resolution=SIDE, seed=3), EditingDataset(root, resolution=SIDE, seed=3)
    draws = [(first[i]["style"], first[i]["reference_path"]) for i in range(6)]
    assert draws == [(again[i]["style"], again[i]["reference_path"]) for i in range(6)]
    first.set_epoch(1)
    assert draws != [(first[i]["style"], first[i]["reference_path"]) for i in range(6)]
    assert {style for style, _ in draws} <= {"a", "b"}


def test_more_than_a_thousand_inputs_fill_several_folders():
    assert item_path(999) == "00000/img00000999.png" and item_path(1000) == "00001/img00001000.png"
    assert edited_path(item_path(1000), "gold") == "00001_gold/img00001000.png"


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "dataset.json").unlink(), "no dataset.json"),
    (lambda root: (root / "dataset.json").write_text("[1, 2]"), "is not {\"labels\""),
    (lambda root: (root / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", [0] * 25]]})),
     "00000/img00000001.png has no camera in dataset.json"),
    (lambda root: (root / "dataset.json").write_text(json.dumps(
        {"labels": [[item_path(i), [0] * (24 if i == 1 else 25)] for i in range(3)]})),
     "00000/img00000001.png: its camera in dataset.json is not 25 finite numbers"),
    (lambda root: (root / "00000_gold" / "img00000001.png").unlink(),
     "unmatched file names: 00000_gold/ has no edit of 00000/img00000001.png"),
    (lambda root: picture(1).save(root / "00000_gold" / "img00000042.png"),
     "unmatched file names: 00000_gold/img00000042.png has no input 00000/img00000042.png"),
    (lambda root: Image.new("RGB", (SIDE, SIDE // 2)).save(root / "00000" / "img00000001.png"),
     f"00000/img00000001.png is {SIDE}x{SIDE // 2}, expected {SIDE}x{SIDE}"),
    (lambda root: shutil.rmtree(root / "00000_gold"), "its folder 00000/ has no style folder"),
    (lambda root: shutil.copytree(root / "00000_gold", root / "00007_gold"),
     "00007_gold/: style folder without its input folder 00007/"),
    (lambda root: [p.unlink() for p in root.rglob("*.png")], "no input images"),
])
def test_malformed_datasets_are_refused_naming_the_file(tmp_path, break_it, message):
    root = write_dataset(tmp_path / "data", count=3, styles=("gold",))
    break_it(root)
    with pytest.raises(DatasetError) as error:
        EditingDataset(root, resolution=SIDE)
    assert message in str(error.value)


def test_style_names_that_cannot_be_folders_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="cannot name a style folder"):
        DatasetWriter(tmp_path).add(0, picture(0), {"a/b": picture(1)})
    assert not DatasetWriter(tmp_path).has(0, ["gold"])
