"""Prompt-to-prompt: identical prompts reproduce the source decode; maps are injected only where asked."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from framework.core.procedure import EditEngine
from framework.core.settings import SamplingConfig
from framework.io.manifests import load_manifest, load_request
from framework.stages import ITODecode, NoMask, method_slots
from framework.stages.inversions import NullTextInversion
from framework.stages.prompt_to_prompt import AttentionExchange, PromptToPrompt, token_mapping


def _engine(backbone, decoder, conditioners):
    return EditEngine(backbone, conditioners, [], **method_slots(NullTextInversion(inner_steps=3), NoMask(), decoder=decoder),
                      sampling=SamplingConfig(steps=6))


def _decode(engine, request):
    state = engine.start(request, 1.0, 0)
    engine.encode(state)
    engine.invert(state)
    engine.estimate_mask(state)
    return engine.final(state)


@pytest.fixture
def conditioners(backbone, tiny_dirs):
    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner

    pose = ControlNetConditioner("pose", str(tiny_dirs["pose"]))
    pose.load(backbone)
    return [TextConditioner(), pose]


@pytest.fixture
def pose_request(manifest):
    return load_request(load_manifest(manifest)[1], None)  # a pose edit: the ControlNet acts


def test_identical_prompts_reproduce_the_source_decode(backbone, conditioners, pose_request, one_thread):
    same = replace(pose_request, edit_prompt=pose_request.source_prompt, edit_maps=pose_request.source_maps)
    p2p = PromptToPrompt(cross_replace=1.0, self_replace=1.0)
    y0 = _decode(_engine(backbone, p2p, conditioners), same)
    assert torch.equal(y0, p2p.last_source)
    plain = _decode(_engine(backbone, ITODecode(blend="none"), conditioners), same)  # the source decode alone (no losses: no ITO)
    assert float((plain - y0).abs().max()) < 1e-4


def test_cross_attention_of_the_source_steers_the_edit_and_processors_come_back(backbone, conditioners, pose_request,
                                                                                  one_thread):
    unet = backbone.unet
    before = dict(unet.attn_processors)
    cn_before = dict(conditioners[1].controlnet.attn_processors)
    seen = []
    original = AttentionExchange.inject

    def spy(self, probs, batch, is_cross):
        out = original(self, probs, batch, is_cross)
        if is_cross and self.cross:
            maps = out.view(batch, -1, *out.shape[1:])
            seen.append(torch.equal(maps[3], maps[2]))  # CFG batch: cond edit row = cond source row (word swap)
        return out

    AttentionExchange.inject = spy
    try:
        edits = {c: _decode(_engine(backbone, PromptToPrompt(cross_replace=c, self_replace=0.0), conditioners),
                            pose_request) for c in (0.0, 1.0)}
    finally:
        AttentionExchange.inject = original
    assert seen and all(seen)
    assert float((edits[1.0] - edits[0.0]).abs().max()) > 1e-3  # the injected maps changed the edit
    assert dict(unet.attn_processors) == before
    assert dict(conditioners[1].controlnet.attn_processors) == cn_before  # the ControlNet kept its attention


def test_token_mapping_word_swap_and_refinement():
    mapper, alphas = token_mapping([49406, 1, 2, 3, 49407], [49406, 1, 9, 3, 49407], 8)
    assert torch.equal(mapper, torch.arange(8)) and torch.equal(alphas, torch.ones(8))  # same count: swap all
    mapper, alphas = token_mapping([49406, 1, 3, 49407], [49406, 1, 5, 3, 49407], 8)  # a word added
    assert mapper.tolist() == [0, 1, 2, 2, 3, 4, 5, 6] and alphas.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
