"""Assemble a toy model from the training stages' exports into one folder (the bundled model's layout).

    python -m framework.toy.model.bundle [--exports outputs/toymodel] [--vae outputs/toymodel/vae-decoder]
        [--to framework/toy/assets/toyworld]

Copies `sd/`, every `controlnet-<modality>/` and `classifier/` from `--exports`; with `--vae`, that
VAE (e.g. the decoder-tuned one, which shares the encoder and so the latent space) replaces `sd/vae`.
The destination is replaced whole, through a temporary sibling folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from framework.core.errors import ModelLoadError
from framework.toy.model.stage import replace_folder


def bundle(exports: Path, to: Path, vae: Path | None = None) -> Path:
    exports, to = Path(exports), Path(to)
    parts = ["sd", *sorted(p.name for p in exports.glob("controlnet-*") if p.is_dir()), "classifier"]
    missing = [p for p in parts if not (exports / p).is_dir()]
    if vae is not None and not (Path(vae) / "config.json").is_file():
        missing.append(str(vae))
    if missing:
        raise ModelLoadError(f"cannot bundle: {', '.join(missing)} missing under {exports}; run the training "
                             "stages first (docs/toyworld.md, 'Training').")

    def write(root: Path) -> None:
        root.mkdir(parents=True)
        for part in parts:
            shutil.copytree(exports / part, root / part)
        if vae is not None:
            shutil.rmtree(root / "sd" / "vae")
            shutil.copytree(vae, root / "sd" / "vae")

    return replace_folder(to, write)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, default=Path("outputs/toymodel"))
    parser.add_argument("--vae", type=Path, default=None, help="a VAE folder to put in place of sd/vae")
    parser.add_argument("--to", type=Path, default=Path("framework/toy/assets/toyworld"))
    args = parser.parse_args(argv)
    try:
        out = bundle(args.exports, args.to, args.vae)
    except ModelLoadError as err:
        raise SystemExit(f"error: {err}") from None
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
