"""PIE-Bench: the data module on a tiny benchmark in PIE's own layout, and its metrics against hand-computed
values or the libraries' own references (tiny random-weight DINO, CLIP and SqueezeNet saved to tmp folders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ManifestError, ModelLoadError
from framework.evaluation.datasets import PIEBenchDataModule, decode_pie_mask, pie_prompt
from framework.evaluation.metrics import (
    BackgroundLPIPS,
    BackgroundPreservation,
    CLIPSimilarity,
    MetricError,
    StructureDistance,
    self_similarity,
    with_frame,
)
from framework.io.manifests import load_request
from framework.io.outputs import EditResult
from tests.conftest import draw_scene

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def box_runs(top: int, left: int, height: int, width: int, image_width: int = SIZE) -> list[int]:
    """The run-length code of a rectangle: one run per row."""
    return [v for row in range(top, top + height) for v in ((row * image_width + left), width)]


ENTRIES = {
    "000000000000": {"image_path": "0_random_140/000000000000.jpg",
                     "original_prompt": "a red disc on a grey wall",
                     "editing_prompt": "a [blue] disc on a grey wall",
                     "editing_instruction": "Make the disc blue", "editing_type_id": "0",
                     "blended_word": "disc disc", "mask": box_runs(8, 8, 23, 23)},
    "111000000000": {"image_path": "1_change_object_80/1_artificial/1_animal/111000000000.jpg",
                     "original_prompt": "a [cat] sitting on a bench", "editing_prompt": "a [dog] sitting on a bench",
                     "editing_instruction": "Turn the cat into a dog", "editing_type_id": "1",
                     "blended_word": "cat dog", "mask": box_runs(30, 36, 20, 16)},
    "211000000000": {"image_path": "2_add_object_80/1_artificial/1_animal/211000000000.jpg",
                     "original_prompt": "a grey wall", "editing_prompt": "a grey wall [with a red disc]",
                     "editing_instruction": "Add a red disc", "editing_type_id": "2",
                     "blended_word": "wall wall", "mask": box_runs(2, 40, 10, 10)},
}


def write_pie(root: Path, entries: dict) -> Path:
    """PIE-Bench's layout: annotation_images/<type folder>/... and mapping_file.json."""
    for n, entry in enumerate(entries.values()):
        image = root / "annotation_images" / entry["image_path"]
        image.parent.mkdir(parents=True, exist_ok=True)
        draw_scene(image, SIZE, box=(8 + 8 * n, 8, 30 + 8 * n, 30))
    (root / "mapping_file.json").write_text(json.dumps(entries))
    return root


@pytest.fixture
def pie(tmp_path) -> Path:
    return write_pie(tmp_path / "PIE-Bench", ENTRIES)


def result(edit: torch.Tensor, input: torch.Tensor, id: str = "e") -> EditResult:
    return EditResult(id=id, edit=edit, input=input, mask=torch.zeros(1, 1, 1, 1), soft_mask=None, guidance=None,
                      source_maps={}, edit_maps={})


class Request:
    """The fields of EditRequest the metrics read."""

    def __init__(self, true_mask=None, edit_prompt="a blue disc", id="e"):
        self.id, self.edit_prompt = id, edit_prompt
        self.extra = {} if true_mask is None else {"true_mask": str(true_mask)}


# ---------------------------------------------------------------- data


def test_decode_pie_mask_by_hand():
    # 3 x 4 image, flat indices 0..11: run (2, 3) sets 2, 3, 4; run (7, 10) sets 7..11 (cut at the end);
    # run (3, 2) overlaps the first.
    expected = np.array([[0, 0, 1, 1],
                         [1, 0, 0, 1],
                         [1, 1, 1, 1]], bool)
    assert (decode_pie_mask([2, 3, 7, 10, 3, 2], 3, 4) == expected).all()
    assert not decode_pie_mask([], 2, 2).any() and not decode_pie_mask([1, 0], 2, 2).any()


@pytest.mark.parametrize("runs, message", [
    ([0, 4, 5], "odd-length list"), ([0, 2.5], "holding 2.5"), ("0 4", "got str"),
    ([12, 1], "run 0 .start 12, length 1. does not fit a 3x4 image"), ([0, 1, -1, 2], "run 1"),
    ([0, -3], "lengths be >= 0"),
])
def test_decode_pie_mask_refuses_malformed_codes(runs, message):
    with pytest.raises(ManifestError, match=message):
        decode_pie_mask(runs, 3, 4)


def test_requests_prompts_meta_and_masks(pie, tmp_path):
    data = PIEBenchDataModule(str(pie), resolution=SIZE, mask_dir=str(tmp_path / "masks"))
    assert [s.id for s in data.specs] == list(ENTRIES)  # the file's order
    first, second = data.specs[0], data.specs[1]
    assert (first.source_prompt, first.edit_prompt) == ("a red disc on a grey wall", "a blue disc on a grey wall")
    assert (second.source_prompt, second.edit_prompt) == ("a cat sitting on a bench", "a dog sitting on a bench")
    assert data.specs[2].edit_prompt == "a grey wall with a red disc"
    assert first.image == pie / "annotation_images" / "0_random_140" / "000000000000.jpg"
    assert second.extra["meta"] == {
        "editing_type_id": 1, "editing_type": "change_object", "image_path": ENTRIES["111000000000"]["image_path"],
        "original_prompt": "a [cat] sitting on a bench", "editing_prompt": "a [dog] sitting on a bench",
        "editing_instruction": "Turn the cat into a dog", "blended_word": "cat dog"}
    assert first.mask is None  # not given to the method by default
    # The written mask is the hand-drawn box: rows 30..49, columns 36..51 of entry 1.
    truth = np.zeros((SIZE, SIZE), bool)
    truth[30:50, 36:52] = True
    assert (np.asarray(Image.open(second.extra["true_mask"])) > 127).tolist() == truth.tolist()
    request = load_request(second, data.resolution)
    assert request.mask is None and request.image.shape == (1, 3, SIZE, SIZE)

    given = PIEBenchDataModule(str(pie), resolution=32, give_mask=True, mask_dir=str(tmp_path / "masks"))
    loaded = load_request(given.specs[1], given.resolution)
    assert given.specs[1].mask == Path(second.extra["true_mask"])  # the same file, written once
    assert loaded.mask.shape == (1, 1, 32, 32)
    assert ((loaded.mask[0, 0] > 0.5).numpy() == truth[::2, ::2]).all()  # 64 -> 32 keeps the even-aligned box


def test_edit_types_and_limit(pie, tmp_path):
    masks = tmp_path / "masks"
    by_name = PIEBenchDataModule(str(pie), edit_types=["change_object", 2], mask_dir=str(masks))
    assert [s.id for s in by_name.specs] == ["111000000000", "211000000000"]
    assert [s.id for s in PIEBenchDataModule(str(pie), edit_types=["0"], mask_dir=str(masks)).specs] == ["000000000000"]
    limited = PIEBenchDataModule(str(pie), limit=1, mask_dir=str(tmp_path / "limited"))
    assert [s.id for s in limited.specs] == ["000000000000"]
    assert len(list((tmp_path / "limited").glob("*.png"))) == 1  # only what will be edited is written
    with pytest.raises(ManifestError, match="edit type 'recolour' unknown.*6=change_attribute_color"):
        PIEBenchDataModule(str(pie), edit_types=["recolour"], mask_dir=str(masks))
    with pytest.raises(ManifestError, match=r"no entry has edit type\(s\) \[9\]"):
        PIEBenchDataModule(str(pie), edit_types=[9], mask_dir=str(masks))


def broken(tmp_path, key: str, **changes) -> Path:
    entries = json.loads(json.dumps(ENTRIES))
    entries[key].update(changes)
    for field, value in changes.items():
        if value is None:
            del entries[key][field]
    return write_pie(tmp_path / "broken", entries)


def test_bad_data_fails_with_the_file_named(pie, tmp_path):
    masks = str(tmp_path / "masks")
    (pie / "annotation_images" / ENTRIES["211000000000"]["image_path"]).unlink()
    with pytest.raises(ManifestError, match=r"entry '211000000000': image '.*211000000000.jpg' does not exist"):
        PIEBenchDataModule(str(pie), mask_dir=masks)
    root = broken(tmp_path, "111000000000", mask=[0, 5, 7])
    with pytest.raises(ManifestError, match=r"mapping_file.json entry '111000000000': 'mask': .*odd-length"):
        PIEBenchDataModule(str(root), mask_dir=masks)
    root = broken(tmp_path, "111000000000", mask=[SIZE * SIZE, 1])
    with pytest.raises(ManifestError, match="another image size"):
        PIEBenchDataModule(str(root), mask_dir=masks)
    root = broken(tmp_path, "000000000000", editing_prompt=None)
    with pytest.raises(ManifestError, match=r"entry '000000000000': missing field\(s\) \['editing_prompt'\]"):
        PIEBenchDataModule(str(root), edit_types=[1], mask_dir=masks)  # every entry is checked, not only the kept
    root = broken(tmp_path, "000000000000", editing_type_id="11")
    with pytest.raises(ManifestError, match="'editing_type_id' must be one of 0-9"):
        PIEBenchDataModule(str(root), mask_dir=masks)
    (root / "annotation_images" / ENTRIES["000000000000"]["image_path"]).write_bytes(b"not a jpeg")
    root = broken(tmp_path, "111000000000")
    (root / "annotation_images" / ENTRIES["111000000000"]["image_path"]).write_bytes(b"not a jpeg")
    with pytest.raises(ManifestError, match="111000000000.jpg' cannot be read"):
        PIEBenchDataModule(str(root), mask_dir=masks)
    with pytest.raises(ManifestError, match="mapping_file.json' does not exist; data.root must be PIE-Bench"):
        PIEBenchDataModule(str(tmp_path / "nowhere"), mask_dir=masks)
    (root / "mapping_file.json").write_text("{")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        PIEBenchDataModule(str(root), mask_dir=masks)


def test_pie_prompt_removes_only_the_brackets():
    assert pie_prompt("a [rusty] bike [ ]") == "a rusty bike  "


# ---------------------------------------------------------------- metric inputs


def scene_pair(tmp_path, size=SIZE):
    """A random input, an edit that differs by 0.2 outside a box and randomly inside it, and the box's mask file."""
    gen = torch.Generator().manual_seed(0)
    input = torch.rand(1, 3, size, size, generator=gen)
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 20:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    edit = (input + 0.2 * (input < 0.8)).clamp(0, 1)
    inside = torch.from_numpy(mask > 0)
    edit[..., inside] = torch.rand(1, 3, int(inside.sum()), generator=gen)
    return input, edit, tmp_path / "mask.png", inside


def repainted(edit: torch.Tensor, inside: torch.Tensor, seed: int) -> torch.Tensor:
    """The edit with other random pixels inside the region (and on the frame): what the metrics must ignore."""
    other = edit.clone()
    region = with_frame(inside.float()[None, None])[0, 0] > 0
    other[..., region] = torch.rand(1, 3, int(region.sum()), generator=torch.Generator().manual_seed(seed))
    return other


def test_background_pixels_by_hand(tmp_path):
    from torchmetrics.functional.image import structural_similarity_index_measure

    input, edit, mask, inside = scene_pair(tmp_path)
    metric = BackgroundPreservation()
    values = metric.update(result(edit, input), Request(mask))
    keep = ~(with_frame(inside.float()[None, None])[0, 0] > 0)  # outside the box and the 1-pixel frame
    diff = (edit - input)[..., keep]
    mse = float((diff ** 2).sum() / (3 * SIZE * SIZE))  # the region counts as equal pixels, not as absent
    assert values["background/mse"] == pytest.approx(mse, rel=1e-5)
    assert values["background/psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    blank = keep.float()
    assert values["background/ssim"] == pytest.approx(float(structural_similarity_index_measure(
        edit * blank, input * blank, data_range=1.0)), rel=1e-6)
    assert 0 < values["background/ssim"] < 1
    assert metric.update(result(repainted(edit, inside, 1), input), Request(mask)) == pytest.approx(values)
    same = metric.update(result(repainted(input, inside, 2), input), Request(mask))
    assert same["background/mse"] == 0.0 and same["background/ssim"] == pytest.approx(1.0)
    assert metric.compute()["background/count"] == 3.0
    full = tmp_path / "full.png"
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(full)
    assert metric.update(result(edit, input), Request(full)) == {}  # nothing outside: no value (PIE's 'nan')
    with pytest.raises(MetricError, match="has no true_mask"):
        metric.update(result(edit, input), Request())


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory) -> Path:
    """Random-weight torchvision SqueezeNet 1.1 as safetensors, and the same as the .pth torch hub caches."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    folder = tmp_path_factory.mktemp("squeezenet")
    save_file(state, str(folder / "squeezenet1_1.safetensors"))
    (folder / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, folder / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    return folder


def test_background_lpips_is_torchmetrics_lpips_outside_the_region(tmp_path, squeezenet, monkeypatch):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    input, edit, mask, inside = scene_pair(tmp_path)
    metric = BackgroundLPIPS(str(squeezenet / "squeezenet1_1.safetensors")).load("cpu")
    value = metric.update(result(edit, input), Request(mask))["background/lpips"]
    # Reference: torchmetrics' public LPIPS, whose torchvision backbone finds the same weights in the torch
    # hub cache (TORCH_HOME) instead of downloading them, on the images blacked out by hand.
    monkeypatch.setenv("TORCH_HOME", str(squeezenet))
    reference = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
    blank = (~(with_frame(inside.float()[None, None]) > 0)).float()
    expected = float(reference(edit * blank * 2 - 1, input * blank * 2 - 1))
    assert value == pytest.approx(expected, rel=1e-5) and value > 0
    assert metric.update(result(repainted(edit, inside, 1), input), Request(mask))["background/lpips"] == \
        pytest.approx(value, rel=1e-6)
    assert metric.update(result(input, input), Request(mask))["background/lpips"] == pytest.approx(0.0, abs=1e-7)


def test_lpips_backbone_errors(tmp_path, squeezenet):
    with pytest.raises(ModelLoadError, match="do not exist.*squeezenet1_1-b8a52dc0.pth"):
        BackgroundLPIPS(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="pickle file"):
        BackgroundLPIPS(str(squeezenet / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")).load("cpu")
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ModelLoadError, match="does not fit the network"):
        BackgroundLPIPS(str(tmp_path / "wrong.safetensors")).load("cpu")


# ---------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    """A random 2-layer ViT (patch 8) saved as a transformers ViTModel folder, like facebook/dino-vitb8."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8, layer_norm_eps=1e-6)
    folder = tmp_path_factory.mktemp("dino")
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_self_similarity_by_hand():
    keys = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    r = 1 / np.sqrt(2)
    expected = torch.tensor([[1, r, 0], [r, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(self_similarity(keys)[0], expected)


def test_structure_distance_by_hand(tiny_dino):
    from transformers import ViTModel

    gen = torch.Generator().manual_seed(1)
    input, edit = torch.rand(1, 3, 48, 48, generator=gen), torch.rand(1, 3, 48, 48, generator=gen)
    metric = StructureDistance(str(tiny_dino), size=32).load("cpu")
    value = metric.update(result(edit, input), Request())["structure/distance"]
    # By hand: resize to 32, 0..255 values normalised with ImageNet's statistics (the benchmark's code),
    # the last layer's keys from the layer's own modules, cosine self-similarity, mean squared difference.
    net = ViTModel.from_pretrained(tiny_dino, add_pooling_layer=False).eval()
    layers = getattr(net, "layers", None) or net.encoder.layer
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    sims = []
    for image in (input, edit):
        x = torch.nn.functional.interpolate(image * 255, size=(32, 32), mode="bilinear", antialias=True)
        with torch.no_grad():
            hidden = net.embeddings((x - mean) / std)
            hidden = layers[0](hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            attention = layers[1].attention
            project = attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key
            keys = project(layers[1].layernorm_before(hidden))[0].double().numpy()  # (17, 32): 16 patches + class
        unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
        sims.append(unit @ unit.T)
    assert value == pytest.approx(float(((sims[0] - sims[1]) ** 2).mean()), rel=1e-4)
    assert value > 0
    assert metric.update(result(input, input), Request())["structure/distance"] == 0.0
    assert metric.compute()["structure/count"] == 2.0
    assert StructureDistance(str(tiny_dino), size=32, layer=0).load("cpu").update(
        result(edit, input), Request())["structure/distance"] != pytest.approx(value)
    with pytest.raises(MetricError, match="layer 5 does not exist; the model has 2"):
        StructureDistance(str(tiny_dino), layer=5).load("cpu")
    with pytest.raises(ModelLoadError, match="does not exist. Get DINO ViT-B/8.*hf download facebook/dino-vitb8"):
        StructureDistance(str(tiny_dino / "missing"))


HUB_NAMES = (("layers.", "encoder.layer."), ("attention.q_proj", "attention.attention.query"),
             ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
             ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
             ("mlp.fc2", "output.dense"))


def test_structure_distance_reads_the_hubs_checkpoint_layout(tiny_dino, tmp_path):
    """facebook/dino-vitb8 is stored with transformers 4's ViT names (encoder.layer.N.attention.attention.key, a
    pooler): the same weights under those names give the same distance."""
    import shutil

    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_dino / "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        for new, old in HUB_NAMES:
            key = key.replace(new, old)
        renamed[key] = value
    assert "encoder.layer.1.attention.attention.key.weight" in renamed
    renamed["pooler.dense.weight"], renamed["pooler.dense.bias"] = torch.zeros(32, 32), torch.zeros(32)
    folder = tmp_path / "hub-layout"
    folder.mkdir()
    shutil.copy(tiny_dino / "config.json", folder / "config.json")
    save_file(renamed, str(folder / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    pair = result(torch.rand(1, 3, 40, 40, generator=gen), torch.rand(1, 3, 40, 40, generator=gen))
    values = [StructureDistance(str(f), size=32).load("cpu").update(pair, Request()) for f in (tiny_dino, folder)]
    assert values[0] == values[1]


def test_resize_shorter_matches_torchvision():
    from torchvision.transforms import Resize

    from framework.evaluation.metrics.piebench import resize_shorter

    images = torch.rand(1, 3, 100, 300)
    for size, max_size in ((224, 480), (40, None), (224, 1000)):
        expected = Resize(size, max_size=max_size, antialias=True)(images)
        got = resize_shorter(images, size, max_size)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A tiny CLIPModel and its processor in one folder, as a hub snapshot of openai/clip-vit-large-patch14 is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from framework.toy.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_similarity_by_hand(tmp_path, tiny_clip_folder):
    from transformers import CLIPModel, CLIPProcessor

    input, edit, mask, inside = scene_pair(tmp_path)
    metric = CLIPSimilarity(str(tiny_clip_folder)).load("cpu")
    values = metric.update(result(edit, input), Request(mask, edit_prompt="a blue circle"))
    model = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_folder)
    region = with_frame(inside.float()[None, None])

    def by_hand(image):  # 100 x max(cos, 0) of the projected embeddings of the 8-bit image and the prompt
        pixels = processor(images=[(image[0] * 255).round().to(torch.uint8)], return_tensors="pt")["pixel_values"]
        ids = processor(text=["a blue circle"], return_tensors="pt", padding=True)
        with torch.no_grad():
            image_emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            text_emb = model.text_projection(model.text_model(**ids).pooler_output)
        return max(100 * float(torch.nn.functional.cosine_similarity(image_emb, text_emb)), 0.0)

    assert values["clip/whole"] == pytest.approx(by_hand(edit), abs=1e-4)
    assert values["clip/edited"] == pytest.approx(by_hand(edit * region), abs=1e-4)
    assert values["clip/whole"] != pytest.approx(values["clip/edited"])
    # Pixels outside the region do not change the edited-region score.
    inside_only = metric.update(result(torch.where(region > 0, edit, input), input),
                                Request(mask, edit_prompt="a blue circle"))
    assert inside_only["clip/edited"] == pytest.approx(values["clip/edited"])
    assert list(metric.update(result(edit, input), Request(edit_prompt="a blue circle"))) == ["clip/whole"]
    with pytest.raises(ModelLoadError, match="has no config.json. Get CLIP ViT-L/14"):
        CLIPSimilarity(str(tmp_path))
