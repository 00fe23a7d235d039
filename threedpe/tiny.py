"""``python -m threedpe tiny-weights DIR``: tiny, randomly initialised models with the real structure.

:func:`save_tiny_weights` writes a complete weight folder in the layout of the released files, at widths that run
every action of the app and the CLI in seconds on a CPU; the outputs are noise (the weights are untrained and labelled
so). Its parts serve tests, demos and benchmarks too:

- :func:`tiny_encoder_config`, :func:`tiny_editor_config`, :data:`TINY_EG3D` / :func:`tiny_generator_config`:
  the same module trees and state-dict keys as the released models, at small widths;
- :func:`tiny_reconstruction_model`: a tiny Live3D network sharing a tiny editor's weights;
- :func:`build_tiny_instruct_pix2pix`: a tiny InstructPix2Pix in the diffusers layout with the standard VAE scale
  factor (8), so a 512^2 edit runs on a 64^2 latent, and attention only at the UNet's lowest resolution;
- :func:`save_editor_weights`: an editor and its Live3D network as a weight folder; :func:`save_tiny_weights`: all of
  them in one folder, at the smaller sizes of :func:`tiny_weights_editor_config` and :data:`TINY_WEIGHTS_EG3D`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import torch

from threedpe.models.editor import EditorConfig, EditorModel, ReconstructionConfig, ReconstructionModel
from threedpe.models.encoder import EncoderConfig
from threedpe.models.generator import GeneratorConfig, TriPlaneGenerator
from threedpe.models.rendering import RenderingConfig
from threedpe.pipeline import UNTRAINED_NOTE
from threedpe.weights import RECONSTRUCTION_WEIGHTS, TEXT_MODEL_FOLDER
from threedpe.weights.checkpoints import EG3DCheckpoint, save_checkpoint


def tiny_encoder_config(**changes) -> EncoderConfig:
    """The editing encoder's module tree and key names at small widths (512^2 input, 96 tri-plane channels)."""
    return EncoderConfig(**{
        "resnet_widths": (8, 16, 16, 16), "resnet_blocks": (1, 1, 1, 1), "aspp_channels": 16, "low_embed_dim": 32,
        "low_num_heads": 2, "feature_channels": 16, "high_stem_channels": 8, "query_channels": 16,
        "final_channels": 16, "final_embed_dim": 32, "mae_embed_dim": 32, "mae_depth": 1, "mae_num_heads": 2,
        **changes})


def tiny_editor_config() -> EditorConfig:
    """The tiny encoder with a small renderer: 12 + 12 samples per ray, 32^2 neural rendering, 128^2 images."""
    return EditorConfig(encoder=tiny_encoder_config(),
                        rendering=RenderingConfig(depth_resolution=12, depth_resolution_importance=12,
                                                  neural_rendering_resolution=32),
                        w_dim=32, sr_widths=(16, 8), untrained=True)


# A small generator in EG3D's settings format (narrow backbone, 32^2 rendering, 128^2 images), so that
# its random-weight checkpoints go through exactly the loading path of the released files.
TINY_EG3D = {
    "init_kwargs": {"z_dim": 64, "w_dim": 64, "c_dim": 25, "img_resolution": 128, "img_channels": 3,
                    "mapping_kwargs": {"num_layers": 2}, "channel_base": 2048, "channel_max": 32,
                    "num_fp16_res": 0, "sr_num_fp16_res": 4, "conv_clamp": None},
    "rendering_kwargs": {"depth_resolution": 12, "depth_resolution_importance": 12, "ray_start": 2.25,
                         "ray_end": 3.3, "box_warp": 1, "clamp_mode": "softplus", "disparity_space_sampling": False,
                         "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
                         "c_gen_conditioning_zero": False, "c_scale": 1.0, "superresolution_noise_mode": "none",
                         "sr_antialias": True, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]},
    "neural_rendering_resolution": 32,
}


def tiny_generator_config() -> GeneratorConfig:
    """The generator of :data:`TINY_EG3D`."""
    return GeneratorConfig.from_official(**TINY_EG3D)


# The weight set of ``python -m threedpe tiny-weights`` is smaller still where the documented commands spend their
# time: the editor takes 128^2 inputs (64^2 tri-planes, so the default mesh grid is 64^3) and renders with 8 + 8
# samples per ray; the generator renders 16^2 rays with a super-resolution of widths (32, 16) instead of EG3D's
# (256, 128) (``sr_kwargs["widths"]``, see GeneratorConfig.from_official) into 64^2 images.
TINY_WEIGHTS_EG3D = {**TINY_EG3D, "init_kwargs": {**TINY_EG3D["init_kwargs"], "img_resolution": 64,
                                                  "sr_kwargs": {"widths": [32, 16]}},
                     "neural_rendering_resolution": 16}


def tiny_weights_editor_config() -> EditorConfig:
    """The editor of ``python -m threedpe tiny-weights``: :func:`tiny_editor_config` at 128^2 input (64^2 tri-planes),
    rendering 32^2 rays with 8 + 8 samples into 128^2 images."""
    return dataclasses.replace(tiny_editor_config(), encoder=tiny_encoder_config(image_size=128),
                               rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8,
                                                         neural_rendering_resolution=32))


def tiny_reconstruction_model(editor: EditorModel) -> ReconstructionModel:
    """A tiny Live3D network sharing every weight it has with ``editor`` (as the released Live3D and 3DPE files
    share their E_low/E_high trunk and renderer); only ``Final_encoder`` and ``Ref_encoder`` then drift apart."""
    model = ReconstructionModel(ReconstructionConfig.like(editor.config))
    shared = {key: value for key, value in editor.encoder.state_dict().items() if not key.startswith("Ref_encoder.")}
    model.encoder.load_state_dict(shared, strict=True)
    model.renderer.load_state_dict(editor.renderer.state_dict(), strict=True)
    return model.eval()


def save_editor_weights(folder: str | os.PathLike, editor: EditorModel, reconstruction: ReconstructionModel,
                        source: str) -> Path:
    """Write ``editor`` and ``reconstruction`` to ``folder`` as ``3dpe.safetensors`` / ``.json`` and
    ``encoder_render_LT_90000.safetensors`` / ``.json`` (their architectures in the JSON); returns ``folder``."""
    folder = Path(folder)
    save_checkpoint(editor.checkpoint(), folder / "3dpe", source=source)
    save_checkpoint(reconstruction.checkpoint(), folder / Path(RECONSTRUCTION_WEIGHTS[0]).stem, source=source)
    return folder


def save_tiny_weights(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a small, randomly initialised, clearly labelled weight set in the product's own format:
    ``3dpe.safetensors`` + ``3dpe.json`` (the editor at reduced widths), ``encoder_render_LT_90000.safetensors``
    + ``.json`` (a Live3D network sharing the editor's weights), ``ffhqrebalanced512-128.safetensors`` + ``.json``
    (a small EG3D generator) and ``instruct-pix2pix/`` (a tiny InstructPix2Pix). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = EditorModel(tiny_weights_editor_config())
    with torch.no_grad():  # density around the surface level so that meshes and depth have structure
        model.renderer.decoder.net[2].bias[0] = 10.0
    save_editor_weights(folder, model, tiny_reconstruction_model(model), "threedpe tiny-weights (untrained)")
    generator = TriPlaneGenerator(GeneratorConfig.from_official(**TINY_WEIGHTS_EG3D))
    save_checkpoint(EG3DCheckpoint(TINY_WEIGHTS_EG3D["init_kwargs"], generator.state_dict(),
                                   TINY_WEIGHTS_EG3D["neural_rendering_resolution"],
                                   TINY_WEIGHTS_EG3D["rendering_kwargs"]),
                    folder / "ffhqrebalanced512-128", source="threedpe tiny-weights (untrained)")
    build_tiny_instruct_pix2pix(folder / TEXT_MODEL_FOLDER)
    (folder / "README.txt").write_text(
        f"{UNTRAINED_NOTE}\nWritten by `python -m threedpe tiny-weights` (seed {seed}). The files have the layout "
        "of a real weight folder (see checkpoints/README.md) at reduced widths.\n")
    return folder


_TINY_WORDS = (
    "make turn into it him her them a an the of to with and in as like look style color recolor scheme "
    "statue bronze golden gold marble stone clown makeup gothic painting van gogh cartoon comic pop art "
    "young child old blue snowy smile"
).split()

_TINY_README = """UNTRAINED tiny InstructPix2Pix pipeline (random weights)
=========================================================
Written by threedpe.tiny.build_tiny_instruct_pix2pix for tests and offline smoke runs.
Every weight is random (seed 0) and the tokenizer vocabulary is a small byte-level BPE made up by threedpe:
its edits are noise, not edits. Nothing here was downloaded. Use timbrooks/instruct-pix2pix for real results.
Layout: the diffusers folder layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/);
images must be multiples of 64 pixels on a side (VAE scale factor 8, as the released model).
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table: printable Latin-1 bytes map to themselves, the rest to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _tiny_bpe(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style vocab + merges: every byte (alone and word-final), then left-to-right merges spelling `words`."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
                tokens.append(merged + piece)
            merged += piece
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tiny_instruct_pix2pix(folder: str | os.PathLike[str]) -> Path:
    """Write a tiny random InstructPix2Pix pipeline (under 1 MB, seed 0, labelled untrained) to `folder`.

    Loadable with `InstructPix2PixEditor.from_pretrained(folder)`; as with the released model a 512x512 image becomes a
    64x64 latent (VAE scale factor 8). Returns the folder.
    """
    # Imported here: transformers/diffusers take seconds to import and only this builder and loading need them.
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tiny_bpe(_TINY_WORDS)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    hidden = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # Three UNet levels on the 64^2 latent of a 512^2 image: cross-attention only at the 16^2 level and in the
        # middle block, so one denoising step stays in the tens of milliseconds on a CPU.
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            sample_size=64,
            in_channels=8,  # noisy latent (4) + encoded input image (4)
            out_channels=4,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        # Four levels: the standard VAE scale factor of 8, as the released model (no attention in the VAE).
        vae = AutoencoderKL(
            block_out_channels=[8, 16, 16, 16],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=512,
            mid_block_add_attention=False,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=hidden,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(vocab),
                max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
        )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    (folder / "README.txt").write_text(_TINY_README)
    return folder
