"""Edit metrics on hand-made images and tiny stand-in networks (no downloads)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ModelLoadError
from framework.evaluation.metrics import (
    CSFID,
    FID,
    ClassifierAccuracy,
    FeatureExtractor,
    GroundTruthL1,
    InceptionFeatures,
    L1Distance,
    MetricError,
    PickScore,
    build_class_statistics,
    frechet_distance,
    load_class_statistics,
    pick_probability,
    resize_centre_crop,
)
from framework.io.manifests import load_image
from framework.io.outputs import EditResult, to_pil

pytestmark = pytest.mark.usefixtures("one_thread")


def result(edit: torch.Tensor, input: torch.Tensor, id: str = "e") -> EditResult:
    return EditResult(id=id, edit=edit, input=input, mask=torch.zeros(1, 1, 1, 1), soft_mask=None, guidance=None,
                      source_maps={}, edit_maps={})


class Request:
    """The fields of EditRequest the metrics read."""

    def __init__(self, id="e", extra=None, meta=None, edit_prompt="a red circle"):
        self.id, self.edit_prompt = id, edit_prompt
        self.extra = dict(extra or {}, **({"meta": meta} if meta is not None else {}))


def flat(colour, h=16, w=16) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


class MeanColour(FeatureExtractor):
    """Features = the mean colour: hand-computable."""

    def forward(self, images):
        return images.mean(dim=(2, 3))


class RandomConv(FeatureExtractor):
    """A fixed random convolution + average pool, (b, 3, H, W) -> (b, 4)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))


# ---------------------------------------------------------------- L1


def test_l1_on_centre_crop_by_hand():
    input = torch.zeros(1, 3, 32, 48)
    edit = input.clone()
    edit[..., :8] = 1.0  # outside the centre crop (columns 8..40): not counted
    edit[..., 8:16] = 0.5  # 8 of the 32 cropped columns differ by 0.5
    metric = L1Distance(crop=32)
    assert metric.update(result(edit, input), Request()) == {"edit/l1": pytest.approx(0.125)}
    metric.update(result(flat([0.5] * 3, 64, 128), flat([0.25] * 3, 64, 128)), Request())  # resized: still 0.25
    assert metric.compute() == {"edit/l1": pytest.approx((0.125 + 0.25) / 2), "edit/count": 2.0}
    metric.reset()
    assert metric.compute() == {}


def test_resize_centre_crop_shape():
    assert resize_centre_crop(torch.rand(2, 3, 40, 80), 16).shape == (2, 3, 16, 16)


# ---------------------------------------------------------------- ground truth


def test_ground_truth_l1_background_exact(tmp_path):
    input = np.full((16, 16, 3), 100, np.uint8)
    target = input.copy()
    target[4:8, 4:12] = (200, 0, 0)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:12] = 255
    Image.fromarray(target).save(tmp_path / "target.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    to_tensor = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    edit = to_tensor(input)
    edit[:, :, 4:8, 4:12] = torch.tensor([200, 100, 0]).view(1, 3, 1, 1) / 255  # only inside the mask
    extra = {"target": str(tmp_path / "target.png"), "true_mask": str(tmp_path / "mask.png")}
    values = GroundTruthL1().update(result(edit, to_tensor(input)), Request(extra=extra))
    assert values["gt/background_l1"] == 0.0
    assert values["gt/target_l1"] == pytest.approx(100 / 255 / 3)  # green off by 100, red and blue exact
    assert values["gt/l1"] == pytest.approx(100 / 255 / 3 * 32 / 256)
    assert GroundTruthL1().update(result(edit, edit), Request()) == {}


def test_ground_truth_sized_like_the_input(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    input = load_image(tmp_path / "scene.png", 12)  # resized to 12, cropped to 8: as the data module would
    request = Request(extra={"target": str(tmp_path / "scene.png")})
    assert GroundTruthL1(resolution=12).update(result(input, input), request) == {"gt/l1": 0.0}
    assert GroundTruthL1().update(result(input, input), request)["gt/l1"] > 0.01  # 20 -> 8 directly: misaligned


# ---------------------------------------------------------------- Fréchet distances


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=3), rng.normal(size=3)
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 1.5])
    # Diagonal Gaussians: ||mu1 - mu2||^2 + sum (sigma1 - sigma2)^2.
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)
    # Full covariances against scipy's matrix square root.
    from scipy.linalg import sqrtm

    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = a @ a.T + 0.1 * np.eye(3), b @ b.T
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_fid_matches_sample_statistics_and_needs_two_edits():
    gen = torch.Generator().manual_seed(1)
    pairs = [(torch.rand(1, 3, 16, 16, generator=gen), torch.rand(1, 3, 16, 16, generator=gen)) for _ in range(6)]
    features = RandomConv()
    metric = FID(features)
    metric.update(result(*pairs[0]), Request())
    with pytest.raises(MetricError, match="at least 2 edits"):
        metric.compute()
    for edit, input in pairs[1:]:
        assert metric.update(result(edit, input), Request()) == {}
    with torch.no_grad():
        e = features(torch.cat([p[0] for p in pairs])).double().numpy()
        i = features(torch.cat([p[1] for p in pairs])).double().numpy()
    expected = frechet_distance(e.mean(0), np.cov(e, rowvar=False), i.mean(0), np.cov(i, rowvar=False))
    assert metric.compute() == {"fid/edit_vs_input": pytest.approx(expected), "fid/count": 6.0}


# ---------------------------------------------------------------- CSFID


def test_csfid_class_mean_by_hand():
    metric = CSFID(MeanColour())
    edits = [  # (source, target, input colour, edit colour)
        ("cat", "dog", [0.2, 0.2, 0.2], [0.6, 0.2, 0.2]),
        ("dog", "cat", [0.5, 0.5, 0.5], [0.1, 0.1, 0.1]),
        ("dog", "cat", [0.7, 0.5, 0.3], [0.3, 0.1, 0.1]),
        ("cat", "bird", [0.4, 0.4, 0.4], [0.9, 0.9, 0.9]),  # no input is a bird: skipped
    ]
    for n, (source, target, inp, out) in enumerate(edits):
        metric.update(result(flat(out), flat(inp)), Request(str(n), meta={"source_class": source,
                                                                           "target_class": target}))
    # dog: edited mean (.6,.2,.2) vs dog inputs (.6,.5,.4): 0 + .09 + .04; cat: (.2,.1,.1) vs (.3,.3,.3): .09
    assert metric.compute() == {"csfid/class_mean": pytest.approx((0.13 + 0.09) / 2),
                                "csfid/classes": 2.0, "csfid/skipped_classes": 1.0}
    with pytest.raises(MetricError, match="no class labels"):
        metric.update(result(flat([0] * 3), flat([0] * 3)), Request("x"))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_csfid_with_reference_statistics(tmp_path, suffix):
    colours = {"cat": [(51, 102, 153), (102, 102, 51), (0, 51, 204)], "dog": [(255, 0, 0), (0, 255, 0)]}
    for name, values in colours.items():
        (tmp_path / "real" / name).mkdir(parents=True)
        for k, colour in enumerate(values):
            Image.new("RGB", (20, 12), colour).save(tmp_path / "real" / name / f"{k}.png")
    stats_path = build_class_statistics(tmp_path / "real", MeanColour(), tmp_path / f"stats{suffix}", size=8)
    stats = load_class_statistics(stats_path)
    real = np.array(colours["cat"], np.float64) / 255
    assert stats["cat"][2] == 3 and np.allclose(stats["cat"][0], real.mean(0))
    assert np.allclose(stats["cat"][1], np.cov(real, rowvar=False))

    edits = [[0.2, 0.3, 0.4], [0.4, 0.3, 0.2], [0.5, 0.5, 0.5]]
    full, diagonal = CSFID(MeanColour(), str(stats_path)), CSFID(MeanColour(), str(stats_path), "diagonal")
    for n, colour in enumerate(edits):
        meta = {"target_class": "cat" if n < 2 else "dog"}  # one dog edit only: skipped (no covariance)
        for metric in (full, diagonal):
            metric.update(result(flat(colour), flat([0] * 3)), Request(str(n), meta=meta))
    e = np.array(edits[:2])
    expected = frechet_distance(e.mean(0), np.cov(e, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    assert full.compute() == {"csfid/frechet": pytest.approx(expected), "csfid/classes": 1.0,
                              "csfid/skipped_classes": 1.0}
    sd_e, sd_r = e.std(0, ddof=1), real.std(0, ddof=1)
    expected = ((e.mean(0) - real.mean(0)) ** 2).sum() + ((sd_e - sd_r) ** 2).sum()
    assert diagonal.compute()["csfid/frechet"] == pytest.approx(expected)


def test_csfid_reference_must_exist(tmp_path):
    with pytest.raises(MetricError, match="build_class_statistics"):
        CSFID(MeanColour(), str(tmp_path / "none.npz"))


# ---------------------------------------------------------------- Inception


def test_inception_features_missing_file_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match=r"inception_v3\.safetensors.*inception_v3\(weights='DEFAULT'\)"):
        InceptionFeatures(str(tmp_path / "inception_v3.safetensors"))


def test_inception_features_2048_and_refuses_fid_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}  # with fc and AuxLogits, as torchvision saves
    save_file(state, str(tmp_path / "inception.safetensors"))
    features = InceptionFeatures(str(tmp_path / "inception.safetensors")).load("cpu")
    assert features(torch.rand(1, 3, 64, 48)).shape == (1, 2048)
    # As torchvision runs its ImageNet weights: transform_input=True on ImageNet-normalised input.
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                                init_weights=False)
    reference.load_state_dict(state)
    reference.fc = torch.nn.Identity()
    x = torch.rand(1, 3, 299, 299)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(features(x), reference.eval()((x - mean) / std), atol=1e-4)

    # Only the fc shape tells pytorch-fid's weights apart, and it is checked first.
    save_file({"fc.weight": torch.zeros(1008, 2048)}, str(tmp_path / "pt_inception.safetensors"))
    with pytest.raises(ModelLoadError, match="pytorch-fid"):
        InceptionFeatures(str(tmp_path / "pt_inception.safetensors")).load("cpu")
    torch.save({"fc.bias": torch.zeros(1)}, tmp_path / "inception.pth")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        InceptionFeatures(str(tmp_path / "inception.pth")).load("cpu")


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def biased_classifier(tmp_path_factory):
    """resnet10t with 5 outputs whose logits are its bias (0, 5, 1, 3, 2) for every image."""
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    state["fc.bias"] = torch.tensor([0.0, 5.0, 1.0, 3.0, 2.0])
    folder = tmp_path_factory.mktemp("classifier")
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 5}))
    (folder / "names.txt").write_text("zero\none\ntwo, deux\nthree\nfour\n")
    return folder


def test_classifier_accuracy_over_run_targets(biased_classifier):
    metric = ClassifierAccuracy(str(biased_classifier))
    image = torch.rand(1, 3, 24, 24)
    for n, (source, target) in enumerate([(0, 4), (2, 4), (4, 2)]):
        assert metric.update(result(image, image), Request(str(n), meta={"source_id": source,
                                                                           "target_id": target})) == {}
    # Targets {2, 4}: the argmax among them is 4 (bias 2 > 1; class 1's bias 5 is not a candidate), so
    # edits 0 and 1 count as 'new', edit 2 as 'original'. Unloaded (tied) weights would pick 2 instead.
    assert metric.compute() == {"classify/new_class": pytest.approx(2 / 3),
                                "classify/original_class": pytest.approx(1 / 3),
                                "classify/count": 3.0, "classify/classes": 2.0}


def test_classifier_accuracy_configured_classes_and_names(biased_classifier):
    metric = ClassifierAccuracy(str(biased_classifier / "model.safetensors"), arch="resnet10t", num_classes=5,
                                classes=["deux", 3], class_names_file=str(biased_classifier / "names.txt"))
    image = torch.rand(1, 3, 24, 24)
    meta = {"source_class": "two", "target_class": "three"}  # argmax over {2, 3} is 3
    assert metric.update(result(image, image), Request(meta=meta)) == {"classify/new_class": 1.0,
                                                                      "classify/original_class": 0.0}
    with pytest.raises(MetricError, match="unknown class 'zebra'"):
        metric.update(result(image, image), Request(meta={"source_class": "zebra", "target_id": 1}))


def test_classifier_accuracy_missing_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="hf download timm/deit_base_distilled_patch16_384"):
        ClassifierAccuracy(str(tmp_path / "nothing"))


# ---------------------------------------------------------------- PickScore


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIPModel and its processor, saved and read back by path."""
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
    CLIPModel(config).save_pretrained(folder / "model")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder / "processor")
    return folder


def test_pickscore_is_scaled_cosine(tiny_clip):
    from transformers import CLIPModel

    metric = PickScore(str(tiny_clip / "model"), str(tiny_clip / "processor")).load("cpu")
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, 40, 40, generator=gen) for _ in range(2)]
    scores = [metric.update(result(im, im), Request(edit_prompt="a red circle"))["pick/score"] for im in images]
    # By hand: the projected embeddings of a separately loaded model, 32 px images, same tokens.
    model = CLIPModel.from_pretrained(tiny_clip / "model").eval()
    ids = metric.processor(text=["a red circle"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        pixels = metric.processor(images=[to_pil(im) for im in images],
                                  return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    expected = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(image, text)
    assert scores == pytest.approx(expected.tolist(), rel=1e-5)
    assert metric.compute() == {"pick/score": pytest.approx(sum(scores) / 2), "pick/count": 2.0}


def test_pick_probability_by_hand():
    probs = pick_probability({"ours": [1.0, 0.0], "diffedit": [0.0, 0.0]})
    sigmoid = 1 / (1 + math.exp(-1))
    assert probs == {"ours": pytest.approx((sigmoid + 0.5) / 2), "diffedit": pytest.approx((1 - sigmoid + 0.5) / 2)}
    assert sum(pick_probability({"a": [3.0], "b": [1.0], "c": [2.0]}).values()) == pytest.approx(1.0)
    with pytest.raises(MetricError, match="same edits"):
        pick_probability({"a": [1.0], "b": [1.0, 2.0]})
