"""Write toy-world edit requests (images, condition maps, true masks) and a manifest.yaml.

Usage: python -m framework.toy.world.make_examples OUT_DIR --size 64 --seed 0 \
           --kinds text pose scribble text_pose --per-kind 1
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image

from .conditions import MODALITIES
from .edits import EDIT_KINDS, EditPair, make_edit


class _Quoted(str):
    """A string YAML writes in double quotes (prompts)."""


class _Flow(dict):
    """A mapping YAML writes inline: {pose: pose_000/source_pose.png}."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents list items under their key, as in the documented manifest."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        """Never use PyYAML's indentless sequences."""
        return super().increase_indent(flow, False)


_Dumper.add_representer(_Quoted, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style='"'))
_Dumper.add_representer(_Flow, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", dict(m), flow_style=True))


def _save_png(array: np.ndarray, path: Path) -> str:
    """Save uint8 RGB or a bool mask (as 0/255 greyscale); PIL's PNG output is byte-stable."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, format="PNG")
    return path.name


def write_pair(pair: EditPair, folder: Path) -> None:
    """Write one edit's images and every modality's source and edit maps into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_png(pair.source_image, folder / "input.png")
    _save_png(pair.target_image, folder / "target.png")
    _save_png(pair.true_mask, folder / "true_mask.png")
    for modality in MODALITIES:
        _save_png(pair.source_maps[modality], folder / f"source_{modality}.png")
        _save_png(pair.edit_maps[modality], folder / f"edit_{modality}.png")


def manifest_entry(pair: EditPair, request_id: str) -> dict:
    """One request in the manifest format; paths are relative to the manifest."""
    return {
        "id": request_id,
        "image": f"{request_id}/input.png",
        "source_prompt": _Quoted(pair.source_prompt),
        "edit_prompt": _Quoted(pair.edit_prompt),
        "source": _Flow({m: f"{request_id}/source_{m}.png" for m in pair.modalities}),
        "edit": _Flow({m: f"{request_id}/edit_{m}.png" for m in pair.modalities}),
        "target": f"{request_id}/target.png",
        "true_mask": f"{request_id}/true_mask.png",
        "seed": int(pair.seed),
    }


def write_examples(
    out_dir, size: int = 64, seed: int = 0, kinds: Sequence[str] = EDIT_KINDS, per_kind: int = 1
) -> Path:
    """Write ``per_kind`` edits of each kind (seeds seed, seed+1, ...) and return manifest.yaml's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = []
    for kind in kinds:
        for index in range(per_kind):
            pair = make_edit(seed + index, kind, size)
            request_id = f"{kind}_{index:03d}"
            write_pair(pair, out_dir / request_id)
            requests.append(manifest_entry(pair, request_id))
    text = yaml.dump(
        {"requests": requests}, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
        indent=2, width=4096, allow_unicode=True,
    )
    manifest = out_dir / "manifest.yaml"
    manifest.write_text(text, encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=EDIT_KINDS, default=list(EDIT_KINDS))
    parser.add_argument("--per-kind", type=int, default=1)
    args = parser.parse_args(argv)
    manifest = write_examples(args.out_dir, args.size, args.seed, args.kinds, args.per_kind)
    print(manifest)
    return manifest


if __name__ == "__main__":
    main()
