"""What a run's background error is made of (docs/background.md), on the toy world's ground truth.

    python experiments/studies/background_floor.py outputs/eval/background_study/blend_s0 [more runs ...]
    python experiments/studies/background_floor.py --vae outputs/toymodel/vae-decoder-background RUN ...

A one-off study script (its numbers live in docs/background.md). For each run folder it splits the mean
|edit - input| outside the true edit region into the part on pixels the estimated mask left out (what the
decode must keep) and the part on true background the mask took in (mask over-reach: the edit may change
it), and sets beside it the toy VAE's own floor on the same edits: |VAE(input) - input| outside the true
region, the error no decode from the input's latents can go below. It also prints the VAE's colour error
on flat grey images across the toy world's background greys (70-200), the tint the issue names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from framework.backbones.sd import StableDiffusion
from framework.toy.model.gates import background_tint


def load(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.NEAREST)
    return np.asarray(image, dtype=np.float64) / 255


def vae_roundtrip(sd: StableDiffusion, image: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return sd.decode_latents(sd.encode_image(tensor))[0].permute(1, 2, 0).double().numpy()


def split_run(sd: StableDiffusion, folder: Path) -> dict[str, float]:
    """Means over the run's edits: background L1, its two parts, and the VAE floor on the same pixels."""
    totals = {"background": [], "kept_part": [], "overreach_part": [], "vae_floor": [], "overreach_area": []}
    for record_path in sorted(folder.glob("*/result.json")):
        extra = json.loads(record_path.read_text()).get("extra") or {}
        if "true_mask" not in extra:
            continue
        edit_dir = record_path.parent
        source = load(edit_dir / "input.png")
        edit = load(edit_dir / "edit.png")
        size = (source.shape[1], source.shape[0])
        true = load(Path(extra["true_mask"]), size)[..., 0] > 0.5
        estimated = load(edit_dir / "mask.png", size)[..., 0] > 0.5 if (edit_dir / "mask.png").is_file() \
            else np.zeros_like(true)
        error = np.abs(edit - source).mean(axis=2)
        background = ~true
        n = background.sum()
        totals["background"].append(error[background].mean())
        totals["kept_part"].append(error[background & ~estimated].sum() / n)
        totals["overreach_part"].append(error[background & estimated].sum() / n)
        totals["overreach_area"].append((background & estimated).sum() / n)
        totals["vae_floor"].append(np.abs(vae_roundtrip(sd, source) - source).mean(axis=2)[background].mean())
    return {k: float(np.mean(v)) for k, v in totals.items() if v} | {"edits": len(totals["background"])}


def scene_psnr(sd: StableDiffusion, count: int = 32) -> float:
    """Mean PSNR of the VAE's round trip of held-out toy scenes (seeds 0..count-1, never trained on)."""
    from framework.toy.world import render, sample_scene

    values = []
    for seed in range(count):
        image = np.asarray(render(sample_scene(seed, 64), 64)[0], dtype=np.float64) / 255
        mse = np.mean((vae_roundtrip(sd, image) - image) ** 2)
        values.append(10 * np.log10(1 / max(mse, 1e-12)))
    return float(np.mean(values))


def main(folders: list[str]) -> None:
    torch.set_grad_enabled(False)
    vae = folders[folders.index("--vae") + 1] if "--vae" in folders else None
    folders = [f for f in folders if f not in ("--vae", vae)]
    sd = StableDiffusion("builtin:toyworld", vae=vae).load()
    tint = {level: [round(float(v), 4) for v in error] for level, error in background_tint(sd).items()}
    print("flat grey round trip, signed mean RGB error on the background:", tint)
    print("held-out scene round trip PSNR (dB):", round(scene_psnr(sd), 2))
    for folder in folders:
        print(Path(folder).name, {k: round(v, 4) for k, v in split_run(sd, Path(folder)).items()})


if __name__ == "__main__":
    main(sys.argv[1:])
