"""Customisation: fine-tuning in both modes on tiny models with a stand-in 2D editor, styles, resume, budgets,
snapshots, cancel, the styled PortraitEditor and the ``customize`` / ``edit --style`` commands."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import ColourEditor, small_training_models
from threedpe.cancel import Cancelled
from threedpe.edit_settings import EditSettings
from threedpe.models.encoder import preprocess_input, preprocess_reference
from threedpe.models.generator import TriPlaneGenerator
from threedpe.pipeline import PortraitEditor
from threedpe.styles import Style, StyleError
from threedpe.tiny import save_editor_weights, tiny_generator_config
from threedpe.training.customize import CustomizeConfig, CustomizeError, StyleTrainer, lora_targets, split_held_out
from threedpe.training.objective import trainable_parameters
from threedpe.training.samples import SyntheticSamples

SEEDS = [0, 1, 2, 4, 5]  # four identities to train on, one held out
# The tiny models learn slowly through LoRA at the default 1e-4 (held-out loss -10% in 20 steps, -44% at 1e-3).
LEARNING_RATES = {"lora": 1e-3, "full": 1e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples():
    # the generator of the tests' small models (64^2 renders), not the product's smaller tiny-weights one
    torch.manual_seed(0)
    source = SyntheticSamples(TriPlaneGenerator(tiny_generator_config()), ColourEditor(), "make it golden",
                              settings=EditSettings(resolution=128))
    return list(source.samples(SEEDS, progress=False))


@pytest.fixture(scope="module")
def models():
    return small_training_models(seed=0)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def _trainer(models, samples, mode: str, **changes) -> StyleTrainer:
    base, reconstruction = models
    pairs, held_out = split_held_out(samples)
    config = CustomizeConfig(mode=mode, batch_size=1, learning_rate=LEARNING_RATES[mode], **changes)
    return StyleTrainer(base, reconstruction, pairs, held_out, config, weights_folder="no-lpips-files-here",
                        source={"kind": "test"})


@pytest.fixture(scope="module")
def trained(models, samples):
    """Each mode fine-tuned for 20 steps, with the shared editor's weights before training."""
    before = _state(models[0])
    runs = {}
    for mode in ("lora", "full"):
        trainer = _trainer(models, samples, mode)
        trainer.train(max_steps=20, snapshot_seconds=(), snapshot_steps=(20,))
        runs[mode] = trainer
    return runs, before


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fine_tuning_lowers_the_held_out_loss_and_touches_only_its_parameters(trained, models, mode):
    runs, before = trained
    trainer = runs[mode]
    start, end = trainer.held_out_curve[0][2], trainer.held_out_curve[-1][2]
    print(f"{mode}: held-out loss {start:.5f} -> {end:.5f} ({1 - end / start:.0%} lower), training loss "
          f"{trainer.curve[0][2]:.5f} -> {trainer.curve[-1][2]:.5f}, {trainer.step} steps, {trainer.seconds:.1f} s")
    assert trainer.held_out_curve[-1][0] == 20 and end < 0.75 * start
    base = models[0]
    assert all(torch.equal(value, before[key]) for key, value in base.state_dict().items())  # shared editor untouched
    trained_names = {name for name, _ in trainer.parameters}
    copy = {key.replace(".base_layer.", "."): value for key, value in trainer.model.state_dict().items()
            if ".lora_" not in key}
    assert copy.keys() == before.keys()
    changed = {key for key, value in copy.items() if not torch.equal(value, before[key])}
    if mode == "full":
        assert len(trained_names) == len(trainable_parameters(base))
        assert changed and changed <= {f"encoder.{name}" for name in trained_names}
    else:
        assert len(trained_names) == 2 * len(lora_targets(base.encoder))
        assert changed == set()  # LoRA trains only the adapters


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_saved_style_reproduces_the_trained_tri_planes(trained, models, samples, tmp_path, mode):
    trainer = trained[0][mode]
    path = trainer.style().save(tmp_path / f"{mode}.safetensors")
    style = Style.load(path)
    print(f"{mode} style: {path.stat().st_size} bytes, {len(style.tensors)} tensors")
    assert style.mode == mode and style.metadata["steps"] == 20 and style.metadata["source"]["kind"] == "test"
    assert set(style.tensors) == {name for name, _ in trainer.parameters}
    editor = PortraitEditor(models[0])
    before = _state(editor.model)
    pair = trainer.held_out
    x = preprocess_input(pair.input, 128)
    ref = preprocess_reference(pair.reference)
    with torch.no_grad():
        expected = trainer.model.encode(x, ref)
        plain = editor.encode(x, ref)
        styled = editor.encode(x, ref, editor.load_style(path))
        again = editor.encode(x, ref, style)
    torch.testing.assert_close(styled, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(styled, again)  # a loaded style is reusable
    assert (styled - plain).abs().max() > 100 * (styled - expected).abs().max()
    assert all(torch.equal(value, before[key]) for key, value in editor.model.state_dict().items())  # restored


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_continues_the_same_loss_curve(models, samples, tmp_path, mode):
    whole = _trainer(models, samples, mode)
    whole.train(max_steps=6, snapshot_seconds=())
    first = _trainer(models, samples, mode)
    first.train(max_steps=3, snapshot_seconds=())
    state = first.save_state(tmp_path / "state.pt")
    resumed = _trainer(models, samples, mode)
    resumed.load_state(state)
    resumed.train(max_steps=6, snapshot_seconds=())
    losses = [loss for _, _, loss in resumed.curve]
    print(f"{mode}: uninterrupted {[round(loss, 6) for _, _, loss in whole.curve]}, resumed {[round(x, 6) for x in losses]}")
    np.testing.assert_allclose(losses, [loss for _, _, loss in whole.curve], rtol=1e-5)
    for name, parameter in resumed.parameters:
        torch.testing.assert_close(parameter, dict(whole.parameters)[name], rtol=1e-5, atol=1e-7)
    other = _trainer(models, samples, mode, seed=1)
    with pytest.raises(CustomizeError, match="other settings"):
        other.load_state(state)


def test_step_and_time_budgets_and_cancel(models, samples):
    trainer = _trainer(models, samples, "lora")
    assert len(trainer.train(max_steps=2, snapshot_seconds=())) == 2 and trainer.step == 2
    with pytest.raises(CustomizeError, match="budget"):
        trainer.train()
    budget = trainer.seconds + 1.0
    progress = trainer.train(max_seconds=budget, snapshot_seconds=())
    longest = max(b.seconds - a.seconds for a, b in zip(progress, progress[1:]))
    print(f"time budget: {len(progress)} steps, training time {trainer.seconds:.2f} s for a budget of {budget:.2f} s")
    assert budget <= trainer.seconds < budget + longest + 0.5
    assert progress[-2].seconds < budget
    stop = threading.Event()
    seen = []

    def callback(update):
        seen.append(update.step)
        if len(seen) == 2:
            stop.set()

    with pytest.raises(Cancelled, match=f"after {trainer.step + 2} fine-tuning steps"):
        trainer.train(max_steps=trainer.step + 10, snapshot_seconds=(), callback=callback, cancel=stop)
    assert trainer.step == seen[-1] and len(trainer.curve) == trainer.step  # the finished steps are kept
    with pytest.raises(Cancelled):
        trainer.train(max_steps=trainer.step + 1, cancel=lambda: True)


def test_snapshots_are_taken_at_the_requested_times_and_steps(models, samples):
    trainer = _trainer(models, samples, "lora")
    marks = {"snapshot_seconds": (0.5, 1.5), "snapshot_steps": (3,)}
    # Budgets are totals: at least 3 steps, then on until 1.6 s of training, however fast this machine is.
    updates = trainer.train(max_steps=3, **marks) + trainer.train(max_seconds=1.6, **marks)
    snapshots = {}  # mark -> (the update with the snapshot, the update before it); one snapshot may serve two marks
    for previous, update in zip([None, *updates], updates):
        for mark in update.snapshot.due.split(", ") if update.snapshot else ():
            snapshots[mark] = (update, previous)
    print({mark: (update.step, round(update.seconds, 2)) for mark, (update, _) in snapshots.items()})
    assert set(snapshots) == {"0.5s", "1.5s", "step 3"} and len(trainer.snapshots) == len({id(u) for u, _ in snapshots.values()})
    for mark, seconds in (("0.5s", 0.5), ("1.5s", 1.5)):
        update, previous = snapshots[mark]
        assert update.seconds >= seconds and (previous is None or previous.seconds < seconds)
    shot = snapshots["step 3"][0].snapshot
    assert snapshots["step 3"][0].step == 3 and shot.step == 3 and shot.image.size == (64, 64)
    assert (3, shot.seconds, shot.loss) in trainer.held_out_curve
    taken = len(trainer.snapshots)
    trainer.train(max_steps=trainer.step + 2, **marks)
    assert len(trainer.snapshots) == taken  # each mark is served once


@pytest.mark.parametrize("zero_gpu", [False, True])
def test_the_app_streams_every_step_and_keeps_each_visitors_trainer_except_on_zero_gpu(models, samples, tmp_path,
                                                                                       monkeypatch, zero_gpu):
    """``EditRunner.fine_tune`` yields an update after every step and the state at the end. Off ZeroGPU (the
    ``spaces`` flag) it keeps a visitor's trainer for that visitor's next call; on ZeroGPU it rebuilds it from the
    session's state every call. Either way the curve is that of one uninterrupted fine-tune."""
    from spaces.config import Config

    from threedpe.serving.runner import EditRunner
    from threedpe.serving.style_sessions import KEPT_TRAINERS, StyleSession

    monkeypatch.setattr(Config, "zero_gpu", zero_gpu)
    builds = []
    for_editor = StyleTrainer.for_editor
    monkeypatch.setattr(StyleTrainer, "for_editor",
                        staticmethod(lambda *args, **kwargs: builds.append(args) or for_editor(*args, **kwargs)))
    editor = PortraitEditor(models[0], weights_folder=save_editor_weights(tmp_path, *models, source="test"))
    runner = EditRunner(editor)
    assert runner.kept_trainers == (0 if zero_gpu else KEPT_TRAINERS)
    config = CustomizeConfig(batch_size=1, learning_rate=LEARNING_RATES["lora"])

    def tune(session: StyleSession, steps: int, owner: str) -> StyleSession:
        updates = list(runner.fine_tune(session, steps, owner=owner))
        assert [update.state is None for update in updates] == [True] * steps + [False]  # streamed, then the state
        assert [update.curve[-1][0] for update in updates[:-1]] == list(range(session.steps + 1,
                                                                               session.steps + steps + 1))
        assert any(update.snapshot is not None for update in updates)  # a preview in every call, however short
        for update in updates:
            session = session.advanced(update)
        return session

    session = StyleSession(samples, {"kind": "test"}, "golden", config)
    session = tune(session, 2, "visitor")
    session = tune(session, 1, "visitor")
    assert len(builds) == (2 if zero_gpu else 1)
    whole = for_editor(editor, samples, tmp_path, config)
    whole.train(max_steps=3, snapshot_seconds=())
    np.testing.assert_allclose([loss for *_, loss in session.curve], [loss for *_, loss in whole.curve], rtol=1e-5)
    assert session.style.metadata["steps"] == 3 and session.state["step"] == 3
    if zero_gpu:
        return
    builds.clear()
    other = tune(StyleSession(samples, {"kind": "test"}, "other", config), 1, "another visitor")  # a trainer of its own
    session = tune(session, 1, "visitor")  # the visitor's own, kept
    assert len(builds) == 1
    runner.release("visitor")  # the visitor's page closed
    session = tune(session, 1, "visitor")
    assert len(builds) == 2
    runner.kept_trainers = 1  # room for one: the other visitor's call drops this visitor's trainer
    tune(other, 1, "another visitor")
    tune(session, 1, "visitor")
    assert len(builds) == 3


def test_a_style_for_another_base_or_a_foreign_file_is_refused(trained, tmp_path):
    style = trained[0]["lora"].style()
    other = PortraitEditor(small_training_models(seed=1)[0])
    path = style.save(tmp_path / "style.safetensors")
    with pytest.raises(StyleError, match="made for another base editor"):
        other.load_style(path)
    photo = Image.new("RGB", (128, 128), (200, 150, 120))
    with pytest.raises(StyleError, match="another base editor"):
        other(photo, reference=photo, aligned=True, style=style)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(StyleError, match="not a threedpe style"):
        Style.load(tmp_path / "plain.safetensors")
    with pytest.raises(StyleError, match="does not exist"):
        Style.load(tmp_path / "missing.safetensors")


def test_portrait_editor_applies_a_style_on_both_routes_and_across_threads(trained, models, samples, tiny_weights,
                                                                          tmp_path):
    style = trained[0]["lora"].style()
    editor = PortraitEditor(models[0], text_model=tiny_weights / "instruct-pix2pix", text_revision=None,
                            cache_dir=tmp_path)
    before = _state(editor.model)
    photo, reference = samples[0].before, samples[1].after
    plain = editor(photo, reference=reference, aligned=True)
    styled = editor(photo, reference=reference, aligned=True, style=style)
    assert not torch.equal(plain.planes, styled.planes)
    assert torch.equal(styled.planes, editor(photo, reference=reference, aligned=True, style=style).planes)
    settings = EditSettings(steps=2, resolution=128)
    text_plain = editor(photo, prompt="make it golden", aligned=True, settings=settings)
    text_styled = editor(photo, prompt="make it golden", aligned=True, settings=settings, style=style)
    assert not torch.equal(text_plain.planes, text_styled.planes)
    assert all(torch.equal(value, before[key]) for key, value in editor.model.state_dict().items())

    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        results[index] = editor(photo, reference=reference, aligned=True, style=style if index % 2 else None).planes

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, planes in results.items():
        assert torch.equal(planes, (styled if index % 2 else plain).planes), index


def test_cli_customize_then_edit_with_the_style(tiny_weights, astronaut_photo, tmp_path, monkeypatch, capsys):
    from threedpe.cli import main

    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gold.safetensors"
    argv = ["customize", "--weights", str(tiny_weights), "--instruction", "make it golden", "--samples", "3",
            "--batch-size", "1", "--edit-steps", "2", "--out", str(out)]
    assert main([*argv, "--steps", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    with capsys.disabled():
        print("\n" + "\n".join(lines[-3:]))
    last = re.fullmatch(r"steps=(\d+) seconds=([\d.]+) held_out_loss_start=([\d.]+) held_out_loss_end=([\d.]+) "
                        r"style=(\S+) bytes=(\d+)", lines[-1])
    assert last and last[1] == "1" and last[5] == str(out) and int(last[6]) == out.stat().st_size
    # the counts asked for (3 identities: 2 trained on, each with the other's edit as reference; 1 held out), and
    # which loss is which: per-step lines are training losses, the last line's are the held-out pair's
    opening = next(line for line in lines if line.startswith("fine-tuning "))
    assert "on 3 of 3 EG3D identities: 2 to train on, as 2 pairs" in opening and "1 held out" in opening, opening
    assert any(line.startswith("step 1  training loss ") for line in lines), lines
    state = tmp_path / "gold.state.pt"
    assert state.is_file()
    assert main([*argv, "--steps", "2", "--resume", str(state)]) == 0
    resumed = capsys.readouterr().out.strip().splitlines()
    assert "resumed from" in "\n".join(resumed) and resumed[-1].startswith("steps=2 ")

    edits = {}
    for label, extra in (("plain", []), ("styled", ["--style", str(out)])):
        folder = tmp_path / label
        assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
                     str(astronaut_photo), "--out", str(folder), *extra]) == 0
        edits[label] = np.asarray(Image.open(folder / "views.png"))
    assert "applied the style" in capsys.readouterr().out
    assert not np.array_equal(edits["plain"], edits["styled"])
    assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
                 str(astronaut_photo), "--out", str(tmp_path), "--style", str(tmp_path / "none.safetensors")]) == 2
    assert "the style" in capsys.readouterr().err


def test_cli_customize_errors_are_one_line_messages(tiny_weights, tmp_path, capsys):
    from threedpe.cli import main

    (tmp_path / "pairs" / "before").mkdir(parents=True)
    cases = [
        (["--pairs", str(tmp_path / "pairs"), "--steps", "1", "--out", str(tmp_path / "s.safetensors")], "after/"),
        (["--instruction", "x", "--steps", "1", "--out", str(tmp_path / "s.png")], ".safetensors"),
        (["--pairs", str(tmp_path / "nowhere"), "--steps", "1", "--out", str(tmp_path / "s.safetensors")],
         "does not exist"),
    ]
    for argv, expected in cases:
        assert main(["customize", "--weights", str(tiny_weights), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert main(["customize", "--weights", str(tmp_path), "--instruction", "x", "--steps", "1",
                 "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "3dpe" in capsys.readouterr().err
    no_eg3d = tmp_path / "no-eg3d"
    no_eg3d.mkdir()
    for path in tiny_weights.iterdir():
        if not path.name.startswith("ffhqrebalanced512-128"):
            (no_eg3d / path.name).symlink_to(path)
    assert main(["customize", "--weights", str(no_eg3d), "--instruction", "x", "--steps", "1",
                 "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "ffhqrebalanced512-128" in err and "photo pairs works without it" in err and "Traceback" not in err
