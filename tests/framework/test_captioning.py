"""Captioners: the tiny BLIP through BlipCaptioner, loading errors, and a user's own Captioner."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from PIL import Image, ImageDraw

from framework.core.errors import ModelLoadError
from framework.io.captioning import BlipCaptioner, Captioner, build_tiny_blip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A tiny random BLIP folder, written once for the module."""
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip", seed=0)


@pytest.fixture(scope="module")
def captioner(tiny_blip):
    """The tiny BLIP loaded through the same code as a real checkpoint."""
    return BlipCaptioner(str(tiny_blip), max_new_tokens=6, num_beams=2).load()


def scenes() -> list[Image.Image]:
    """Two different images: a red disc on grey, a white bar on black (RGBA, to check conversion)."""
    first = Image.new("RGB", (48, 40), (120, 120, 120))
    ImageDraw.Draw(first).ellipse((8, 8, 30, 30), fill=(220, 40, 40))
    second = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    ImageDraw.Draw(second).rectangle((10, 28, 54, 36), fill=(255, 255, 255, 255))
    return [first, second]


def forbid_loading(monkeypatch, processor: bool = True):
    """Make weight (and processor) loading fail the test, to prove an error came before it."""
    import transformers

    def fail(*args, **kwargs):
        raise AssertionError("weights were read before the error")

    monkeypatch.setattr(transformers.BlipForConditionalGeneration, "from_pretrained", fail)
    if processor:
        monkeypatch.setattr(transformers.BlipProcessor, "from_pretrained", fail)


def pickle_only_copy(tiny_blip, folder):
    """The tiny BLIP with its weights as pytorch_model.bin only."""
    from safetensors.torch import load_file

    shutil.copytree(tiny_blip, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_tiny_blip_captions_each_image_deterministically(captioner):
    first = captioner.caption(scenes())
    assert len(first) == 2
    assert all(isinstance(text, str) and text and text == text.strip() for text in first)
    assert captioner.caption(scenes()) == first  # no sampling: the same images give the same text
    assert captioner(scenes()[:1]) == first[:1]  # a batch of one agrees with the batch of two


def test_prompt_prefix_is_removed(tiny_blip, captioner):
    prompted = BlipCaptioner(str(tiny_blip), prompt="a photo of", max_new_tokens=6, num_beams=2).load()
    texts = prompted.caption(scenes())
    assert all(texts)
    # The model's own output, decoded whole, is the prompt followed by the caption.
    inputs = prompted.processor(images=scenes(), text=["a photo of"] * 2, return_tensors="pt")
    out = prompted.model.generate(pixel_values=inputs.pixel_values, input_ids=inputs.input_ids,
                                  do_sample=False, num_beams=2, max_new_tokens=6)
    whole = prompted.processor.batch_decode(out, skip_special_tokens=True)
    assert whole == [f"a photo of {text}" for text in texts]


def test_loading_is_lazy_and_follows_to(tiny_blip):
    blip = BlipCaptioner(str(tiny_blip), max_new_tokens=4, num_beams=1)
    assert not blip.loaded and blip.caption([]) == []  # nothing to caption: nothing read
    blip.to(torch.float64)  # before load: the weights go where the captioner was sent
    blip.caption(scenes()[:1])
    assert blip.loaded and next(blip.model.parameters()).dtype == torch.float64
    assert "model._anchor" not in blip.state_dict() and any(k.startswith("model.") for k in blip.state_dict())
    blip.train()
    assert not blip.model.training


def test_caption_rejects_a_bare_image(captioner):
    with pytest.raises(TypeError, match="list of images"):
        captioner.caption(scenes()[0])
    with pytest.raises(TypeError, match="image 1"):
        captioner.caption([scenes()[0], "input.png"])


def test_missing_folder_fails_before_loading(tmp_path, monkeypatch):
    forbid_loading(monkeypatch)
    missing = tmp_path / "models" / "no-such-blip"
    with pytest.raises(ModelLoadError, match="no-such-blip.*does not exist"):
        BlipCaptioner(str(missing))


def test_uncached_hub_id_fails_at_once_offline(monkeypatch):
    forbid_loading(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline") as err:
        BlipCaptioner("nobody-ito-edit/blip-never-cached")
    assert time.perf_counter() - start < 5
    assert "hf download nobody-ito-edit/blip-never-cached" in str(err.value)


def test_pickle_weights_need_allow_pickle(tiny_blip, captioner, tmp_path, monkeypatch):
    folder = pickle_only_copy(tiny_blip, tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*allow_pickle: true"):
        BlipCaptioner(str(folder))
    # Allowed, the same weights give the same captions.
    allowed = BlipCaptioner(str(folder), max_new_tokens=6, num_beams=2, allow_pickle=True)
    assert allowed.caption(scenes()) == captioner.caption(scenes())


def test_safetensors_only_is_passed_to_from_pretrained(tiny_blip, monkeypatch):
    import transformers

    seen = []
    original = transformers.BlipForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("use_safetensors"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.BlipForConditionalGeneration, "from_pretrained", classmethod(spy))
    BlipCaptioner(str(tiny_blip)).load()
    BlipCaptioner(str(tiny_blip), allow_pickle=True).load()
    assert seen == [True, None]


def test_a_load_failure_is_a_model_load_error(tiny_blip, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_blip, folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    blip = BlipCaptioner(str(folder))
    with pytest.raises(ModelLoadError, match="captioner: could not load"):
        blip.load()


def test_a_missing_processor_fails_before_the_weights(tiny_blip, tmp_path, monkeypatch):
    folder = tmp_path / "model-only"
    shutil.copytree(tiny_blip, folder)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).unlink()
    blip = BlipCaptioner(str(folder))
    forbid_loading(monkeypatch, processor=False)
    with pytest.raises(ModelLoadError, match="could not load BlipProcessor.*processor files"):
        blip.load()


class Filenames(Captioner):
    """A user's captioner: the caption is a fixed phrase and the image size."""

    def __init__(self, phrase: str = "a picture"):
        super().__init__()
        self.phrase = phrase
        self.loads = 0

    def load(self):
        self.loads += 1
        return self

    def caption(self, images):
        return [f"{self.phrase} {image.width}x{image.height}" for image in images]


def test_custom_captioner_through_the_base_interface():
    custom: Captioner = Filenames("a scene").to("cpu")
    assert custom.loaded and custom.load() is custom
    assert custom(scenes()) == ["a scene 48x40", "a scene 64x64"]
    assert custom.device == torch.device("cpu") and not custom.train().training
    with pytest.raises(NotImplementedError, match="Bare must implement caption"):
        type("Bare", (Captioner,), {})().caption(scenes())


def test_selected_by_class_path(tiny_blip):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--captioner", type=Captioner)
    config = parser.parse_object({"captioner": {"class_path": "framework.io.captioning.BlipCaptioner",
                                                "init_args": {"pretrained": str(tiny_blip), "num_beams": 1}}})
    blip = parser.instantiate_classes(config).captioner
    assert isinstance(blip, BlipCaptioner) and blip.num_beams == 1 and not blip.loaded


def test_requests_without_a_caption_are_captioned_and_recorded(tiny_blip, tmp_path, tiny_dirs, manifest, capsys):
    """A manifest row with no source_prompt: the configured captioner writes it, the outputs record it."""
    import json

    import yaml

    from framework.lightning.cli import main
    from tests.framework.test_cli import FAST, write_config

    rows = [{"id": "uncaptioned", "image": "input.png", "edit_prompt": "a blue circle"}]
    (manifest.parent / "nocap.yaml").write_text(yaml.safe_dump(rows))
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest.parent / "nocap.yaml", out)
    with pytest.raises(SystemExit):  # no captioner: one clear error
        main(["fit", "--config", str(config), *FAST])
    assert "source_prompt" in capsys.readouterr().err
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"]["captioner"] = {"class_path": "framework.io.captioning.BlipCaptioner",
                                              "init_args": {"pretrained": str(tiny_blip), "max_new_tokens": 5}}
    config.write_text(yaml.safe_dump(data))
    main(["fit", "--config", str(config), *FAST])
    record = json.loads((out / "uncaptioned" / "result.json").read_text())
    expected = BlipCaptioner(str(tiny_blip), max_new_tokens=5).load().caption([Image.open(manifest.parent / "input.png")])
    assert record["source_prompt"] == expected[0] != ""
    assert record["extra"]["caption"]["text"] == expected[0]
    assert record["edit_prompt"] == "a blue circle"
