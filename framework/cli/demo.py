"""`python -m framework demo`: an interactive editing page (Gradio) over the project's EditPipeline.

    python -m framework demo                                   # the bundled toy model, CPU, no downloads
    python -m framework demo --config experiments/pose.yaml    # any experiment YAML (real checkpoints)
    python -m framework demo --port 7860 --host 0.0.0.0

The page builds the experiment's pipeline with `EditPipeline.from_config` (the model section read as
`python -m framework fit --config ...` reads it: the same defaults, checks and errors) and edits an
`EditRequest` read by the data module's own loader from a manifest row that the page writes. Each
edit's folder (`<out>/<n>/`) holds that manifest and its files, and the page prints the CLI command
that makes the same edit, to the same pixels. Needs the `demo` extra: `pip install -e '.[demo]'`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from framework.core.errors import ConfigError, EditError, edit_error_in
from framework.core.settings import step_count
from framework.pipeline import EditPipeline

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
STAGES = {"inversion": "DDIM inversion (Eq. 2)", "mask": "edit mask (Eq. 7)", "guidance": "guidance image",
          "refine": "guidance refinement (A.5)", "final": "final decode with ITO (Eq. 6)"}


# Small images (the toy model's 64 px) fill their panel, drawn as pixels rather than blurred.
CSS = ".pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


class ProgressReporter:
    """A step callback of the pipeline: turns its intermediates into (stage, step, steps) reports."""

    def __init__(self, report: Callable[[str, int, int], None], steps: dict[str, int]):
        self.report, self.steps = report, steps

    def __call__(self, pipe, i: int, t: int, info: dict[str, Any]) -> None:
        if info["kind"] == "step" and info["stage"] in self.steps:
            self.report(info["stage"], i + 1, self.steps[info["stage"]])
            if info["stage"] == "inversion" and i + 1 == self.steps["inversion"]:
                self.report("mask", 0, 1)  # the mask comes next and reports no steps of its own


class DemoEngine:
    """One experiment's pipeline, built once, that edits requests on demand.

    Args:
        config: Experiment YAML (None: the quickstart on the bundled toy model).
        overrides: `--model.*` arguments as the CLI takes them, e.g. ["--model.mask.seeds", "4"].
        out: Folder of the page's edits, one numbered sub-folder each.
    """

    def __init__(self, config: Optional[str] = None, overrides: Sequence[str] = (), out: str = "outputs/demo"):
        import torch

        from framework.io.manifests import load_manifest
        from framework.lightning.cli import quiet_libraries

        quiet_libraries()
        self.config = str(Path(config) if config else QUICKSTART)
        if not Path(self.config).is_file():
            raise ConfigError(f"--config '{self.config}' does not exist; give an experiment YAML such as "
                              f"experiments/pose.yaml.")
        data = yaml.safe_load(Path(self.config).read_text())["data"]["init_args"]
        manifest = Path(data["manifest"])
        if not manifest.is_file() and (ROOT / manifest).is_file():  # run from outside the repository
            manifest = ROOT / manifest
        self.annotators, self.allow_pickle = data.get("annotators"), bool(data.get("allow_pickle", False))
        self.overrides = list(overrides)
        self.pipe = EditPipeline.from_config(self.config, self.overrides)
        self.pipe.to("cuda" if torch.cuda.is_available() else "cpu")
        self.examples = {spec.id: spec for spec in load_manifest(manifest, self.annotators, self.allow_pickle)}
        self.modalities = self.pipe.modalities
        self.out = Path(out)
        self._count = last_edit_number(self.out)

    # ----------------------------------------------------------------------- requests
    def example_files(self, example_id: str) -> dict[str, Any]:
        """The input image path and every map of an example as an image file (maps drawn from specs rendered)."""
        from PIL import Image

        spec = self.examples[example_id]
        with Image.open(spec.image) as probe:
            size = probe.size
        files: dict[str, Any] = {"image": str(spec.image), "source": {}, "edit": {}}
        folder = self.out / "examples" / example_id
        for side in ("source", "edit"):
            for modality, item in getattr(spec, side).items():
                if isinstance(item, Path):
                    files[side][modality] = str(item)
                else:  # a MapSpec (keypoints or a detector): render it at the input's size, as the loader does
                    path = folder / f"{side}_{modality}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    item.render(size).convert("RGB").save(path)
                    files[side][modality] = str(path)
        return files

    def write_request(self, image: Optional[str], source_prompt: str, edit_prompt: str, maps: dict[str, dict],
                      mask: Optional[str], seed: int, lam: float) -> Path:
        """Copy the page's inputs into a new edit folder and write its one-row manifest; returns the manifest."""
        if not image:
            raise EditError("no input image: pick an example or upload an image.")
        self._count += 1
        folder = self.out / f"{self._count:04d}"
        folder.mkdir(parents=True, exist_ok=True)

        def copy(path: str, name: str) -> str:
            name += Path(path).suffix.lower()
            shutil.copyfile(path, folder / name)
            return name

        row: dict[str, Any] = {"id": f"demo_{self._count:04d}", "image": copy(image, "input"),
                               "source_prompt": source_prompt, "edit_prompt": edit_prompt or source_prompt,
                               "seed": int(seed), "lam": float(lam)}
        for side in ("source", "edit"):
            row[side] = {m: flatten_map(path, folder / f"{side}_{m}.png") for m, path in maps.get(side, {}).items()
                         if path}
        if mask:
            row["mask"] = copy(mask, "mask")
        manifest = folder / "manifest.yaml"
        manifest.write_text(yaml.safe_dump({"requests": [row]}, sort_keys=False))
        return manifest

    def cli_command(self, manifest: Path, update_steps: int, threshold: float) -> str:
        """The command line that makes the same edit with `python -m framework`."""
        args = ["python -m framework fit --config", _shown(self.config), *self.overrides,
                "--data.manifest", _shown(manifest),
                "--model.ito.update_steps", str(update_steps), "--model.mask.threshold", str(threshold),
                "--model.output_dir", _shown(manifest.parent / "cli")]
        return " ".join(args)

    # ---------------------------------------------------------------------------- edit
    def set_options(self, update_steps: int, threshold: float) -> None:
        """t_u and tau, checked as the CLI checks them (the settings' own checks, then the stages' against the
        sampling); a refused value leaves the pipeline as it was."""
        pipe = self.pipe
        ito = replace(pipe.ito, update_steps=int(update_steps))  # the settings' own checks
        mask = replace(pipe.mask, threshold=float(threshold))
        pipe.ito, pipe.mask = ito, mask  # t_u against the steps first: a refused value changes nothing

    def edit(self, manifest: Path, report: Callable[[str, int, int], None] = lambda *a: None):
        """Load the manifest's request with the data module's loader and edit it with the pipeline."""
        import torch

        from framework.io.manifests import load_manifest, load_request

        pipe = self.pipe
        spec = load_manifest(manifest, self.annotators, self.allow_pickle)[0]
        request = load_request(spec, pipe.resolution)
        schedule = pipe.backbone.sampler(pipe.sampling.steps)
        n_final = schedule.encode_level(pipe.sampling.encode_ratio)
        n_guide = pipe.guidance_generator.level(schedule, pipe.sampling)
        # G's decode may stop at the last g_t the final decode reads (NoiseEncodedGuidance's decode: needed)
        read = schedule.decode_timesteps(n_final)[:pipe.decoder.guidance_steps(n_final)]
        stop = getattr(pipe.guidance_generator, "needed_steps", lambda *args: None)(
            schedule.decode_timesteps(n_guide), read)
        steps = {"inversion": max(n_final, n_guide), "guidance": stop or n_guide, "refine": n_final, "final": n_final}
        # On a GPU the CLI runs 16-mixed by default (fp32 weights under fp16 autocast): the same here.
        mixed = torch.autocast("cuda", torch.float16) if pipe.device.type == "cuda" else nullcontext()
        with warnings.catch_warnings(record=True) as caught, mixed:
            warnings.simplefilter("always")
            result = pipe.edit(request, ProgressReporter(report, steps))
        result.record["settings"] = pipe.settings_digest()
        notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return result, notes


def last_edit_number(out: Path) -> int:
    """The highest numbered edit folder in `out` (0 if none): a new session goes on after it, overwriting none."""
    return max((int(p.name) for p in Path(out).glob("[0-9][0-9][0-9][0-9]") if p.is_dir()), default=0)


def flatten_map(path: str, out: Path) -> str:
    """A map from the page as an RGB PNG: strokes drawn on the editor's transparent canvas land on black,
    the background of pose, scribble and line maps (the loader would put transparency on white)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image.convert("RGB").save(out)
    return out.name


def _editor_path(value) -> Optional[str]:
    """The image a Gradio ImageEditor holds (its composite: background and strokes), as a file path."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("composite") or value.get("background")
    return value


def build_page(engine: DemoEngine):
    """The Gradio Blocks of the page; every control maps to a manifest field or a CLI option."""
    import gradio as gr

    from framework.io.outputs import mask_overlay, to_pil

    pipe = engine.pipe
    ids = list(engine.examples)
    first = engine.example_files(ids[0]) if ids else None
    spec0 = engine.examples[ids[0]] if ids else None
    steps = pipe.sampling.steps

    with gr.Blocks(title="ito-edit") as page:
        gr.Markdown(f"## ito-edit: multi-modal image editing by inference-time optimisation\n"
                    f"Experiment `{_shown(engine.config)}` · model `{pipe.backbone.pretrained}` · "
                    f"modalities: {', '.join(engine.modalities) or 'text only'}. Pick an example or upload an "
                    f"image, change the prompt and the maps, then **Edit**.")
        with gr.Row():
            with gr.Column():
                example = gr.Dropdown(ids, value=ids[0] if ids else None, label="example", elem_id="example")
                image = gr.Image(first and first["image"], type="filepath", label="input image",
                                 sources=["upload", "clipboard"], height=256, elem_classes=["pixels"],
                                 elem_id="input-image")
                source_prompt = gr.Textbox(spec0.source_prompt if spec0 else "", label="source prompt (caption)",
                                           elem_id="source-prompt")
                edit_prompt = gr.Textbox(spec0.edit_prompt if spec0 else "", label="edit prompt",
                                         elem_id="edit-prompt")
                editors = {}
                for modality in engine.modalities:
                    with gr.Row():
                        for side in ("source", "edit"):
                            value = first and first[side].get(modality)
                            editors[side, modality] = gr.ImageEditor(
                                value, type="filepath", format="png", label=f"{side} {modality} map (draw or upload)",
                                brush=gr.Brush(colors=["#ffffff", "#000000"], default_size=3), height=300,
                                elem_id=f"{side}-{modality}")
                mask = gr.Image(None, type="filepath", label="mask (optional, white = edit)", height=200,
                                elem_id="mask")
                with gr.Row():
                    lam = gr.Slider(0, 1, value=_lam(spec0, pipe), step=0.05, label="lam (preservation weight)",
                                    elem_id="lam")
                    t_u = gr.Slider(0, steps, value=step_count(pipe.ito.update_steps, steps), step=1, label="t_u (ITO steps)",
                                    elem_id="t_u")
                with gr.Row():
                    tau = gr.Slider(0, 1, value=pipe.mask.threshold, step=0.05, label="tau (mask threshold)",
                                    elem_id="tau")
                    seed = gr.Number(_seed(spec0, pipe), precision=0, label="seed", elem_id="seed")
                run = gr.Button("Edit", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                shown = dict(type="pil", format="png", interactive=False, height=256, elem_classes=["pixels"])
                out_edit = gr.Image(label="edit", elem_id="out-edit", **shown)
                with gr.Row():
                    out_mask = gr.Image(label="mask (Eq. 7) over the input", elem_id="out-mask", **shown)
                    out_guidance = gr.Image(label="guidance image", elem_id="out-guidance", **shown)
                command = gr.Code("", language="shell", label="the same edit from the command line", wrap_lines=True,
                                  elem_id="command")

        map_inputs = [editors[k] for k in sorted(editors)]

        def load_example(example_id):
            files, spec = engine.example_files(example_id), engine.examples[example_id]
            maps = [files[side].get(m) for side, m in sorted(editors)]
            return [files["image"], spec.source_prompt, spec.edit_prompt, *maps, None, _lam(spec, pipe),
                    _seed(spec, pipe)]

        example.change(load_example, example, [image, source_prompt, edit_prompt, *map_inputs, mask, lam, seed])

        def do_edit(image_path, src, dst, *rest, progress=gr.Progress()):
            map_values = rest[:len(editors)]
            mask_path, lam_value, t_u_value, tau_value, seed_value = rest[len(editors):]
            maps: dict[str, dict] = {"source": {}, "edit": {}}
            for (side, modality), value in zip(sorted(editors), map_values):
                if _editor_path(value):
                    maps[side][modality] = _editor_path(value)
            try:
                engine.set_options(t_u_value, tau_value)
                manifest = engine.write_request(image_path, src, dst, maps, mask_path, seed_value, lam_value)
                progress(0, desc="encoding the input")
                report = lambda stage, i, n: progress((i, n), desc=STAGES.get(stage, stage))  # noqa: E731
                result, notes = engine.edit(manifest, report)
            except Exception as err:  # noqa: BLE001 - the project's errors are shown; others propagate
                error = edit_error_in(err)
                if error is None:
                    raise
                return f"**error:** {error}", None, None, None, ""
            rec = result.record
            made = "made" if rec["guidance_image"] else "skipped"
            text = (f"edited `{rec['id']}` in {rec['seconds']['total']:.1f} s: lam {rec['lam']}, seed {rec['seed']}, "
                    f"mask area {rec['mask_area']:.3f}, guidance image {made}")
            text += "".join(f"\n\nwarning: {note}" for note in notes)
            guidance = None if result.guidance is None else to_pil(result.guidance)
            return (text, to_pil(mask_overlay(result.input, result.mask)), guidance, to_pil(result.edit),
                    engine.cli_command(manifest, t_u_value, tau_value))

        run.click(do_edit, [image, source_prompt, edit_prompt, *map_inputs, mask, lam, t_u, tau, seed],
                  [status, out_mask, out_guidance, out_edit, command], concurrency_limit=1)
    return page


def _shown(path) -> str:
    """A path as the command line shows it: relative to the working folder where it is inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _lam(spec, pipe) -> float:
    lam = spec.lam if spec is not None and spec.lam is not None else pipe.lam
    return 0.6 if lam == "auto" else float(lam)


def _seed(spec, pipe) -> int:
    return spec.seed if spec is not None and spec.seed is not None else pipe.seed


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framework demo", description=__doc__.splitlines()[0],
                                     epilog="Arguments after `--` go to the experiment's CLI, e.g. "
                                            "-- --model.mask.seeds 4.")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser.add_argument("--config", default=None, help="experiment YAML (default: the quickstart, bundled toy model)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--out", default="outputs/demo", help="folder of the page's edits")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a closed network
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs Gradio: pip install -e '.[demo]'", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        engine = DemoEngine(args.config, extra, args.out)
    except Exception as err:  # noqa: BLE001
        error = edit_error_in(err)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    page = build_page(engine)
    print(f"ito-edit demo on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    page.queue().launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True, css=CSS)


if __name__ == "__main__":
    main()
