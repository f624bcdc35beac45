"""Prompt-to-prompt (Hertz et al. 2022) as a final decode: the source decode's attention maps in the edit decode.

The source branch (under C_0) and the edit branch (under C_EDIT) are decoded together from the same
inverted latents x*_{t_E}, as one UNet batch. For the first `cross_replace` fraction of the steps the
edit branch's cross-attention maps M*_t are replaced by the source branch's M_t (word swap: the prompts
have as many tokens; otherwise the tokens the prompts share take the source's maps and new tokens keep
their own, P2P's refinement), and for the first `self_replace` fraction its self-attention maps too.
For real inputs it runs on null-text inversion (Mokady et al. 2023), which makes the source branch
retrace the input: select `inversion: framework.stages.inversions.NullTextInversion`.

The maps are exchanged through diffusers' attention-processor API on the UNet only; ControlNets
keep their own attention. Shapes: attention probabilities (b * heads, queries, keys); the UNet batch
is [source, edit] (conditional only) or [uncond source, uncond edit, cond source, cond edit] (CFG),
and maps are injected in the conditional pairs, as in the reference implementation.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Optional

import torch

from framework.core.denoiser import Conditioning
from framework.core.errors import ConfigError
from framework.core.sampling import decode
from framework.stages import Decoder

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


def token_mapping(source_ids: list[int], edit_ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the edit prompt's `length` key positions: the source position whose map it takes, and
    whether it takes one (1) or keeps its own (0). Same token count: identity (word swap); otherwise the
    tokens in common are aligned (difflib) and the padding after each prompt's end is matched in order."""
    if len(source_ids) == len(edit_ids):
        return torch.arange(length), torch.ones(length)
    mapper, alphas = torch.arange(length), torch.zeros(length)
    matcher = difflib.SequenceMatcher(a=source_ids, b=edit_ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapper[block.b + k], alphas[block.b + k] = block.a + k, 1.0
    for k, j in enumerate(range(len(edit_ids), length)):  # padding: in order, clamped to the last position
        mapper[j], alphas[j] = min(len(source_ids) + k, length - 1), 1.0
    return mapper, alphas


class AttentionExchange:
    """The state shared by the UNet's attention processors during one prompt-to-prompt decode."""

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor):
        self.mapper, self.alphas = mapper, alphas
        self.cross = self.self_attn = False  # whether each kind is injected at the current step
        self.first_pair = 0  # row of the first conditional (source, edit) pair

    def inject(self, probs: torch.Tensor, batch: int, is_cross: bool) -> torch.Tensor:
        """Edit rows' maps from their source rows; probs (batch * heads, q, k)."""
        if not (self.cross if is_cross else self.self_attn):
            return probs
        maps = probs.view(batch, -1, *probs.shape[1:]).clone()  # (b, heads, q, k)
        for row in range(self.first_pair, batch - 1, 2):
            source = maps[row]
            if is_cross:
                alphas = self.alphas.to(probs)
                maps[row + 1] = source[..., self.mapper.to(probs.device)] * alphas + maps[row + 1] * (1 - alphas)
            else:
                maps[row + 1] = source
        return maps.view_as(probs)


class ExchangingAttnProcessor:
    """diffusers' plain attention (AttnProcessor) with the probabilities passed through an AttentionExchange."""

    def __init__(self, exchange: AttentionExchange):
        self.exchange = exchange

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, sequence, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        probs = self.exchange.inject(probs, batch, is_cross)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class PromptToPrompt(Decoder):
    """Prompt-to-prompt's decode from the inversion (no mask, no ITO, no guidance image)."""

    batchable = False  # it swaps the UNet's attention processors for its decode: batched edits run one at a time

    def __init__(self, cross_replace: float = 0.8, self_replace: float = 0.4):
        """
        Args:
            cross_replace: Fraction of the decode's first steps whose cross-attention maps come from the
                source branch (Hertz et al.: 0.8).
            self_replace: The same for self-attention maps (Hertz et al.: 0.4; 0 turns it off).
        """
        if not (0 <= cross_replace <= 1 and 0 <= self_replace <= 1):
            raise ConfigError(f"PromptToPrompt: cross_replace and self_replace must be in [0, 1], got "
                              f"{cross_replace}, {self_replace}.")
        self.cross_replace, self.self_replace = cross_replace, self_replace
        self.last_source: Optional[torch.Tensor] = None  # y_0 of the source branch of the last decode

    def decode(self, tools: "StageTools", state: "EditState") -> torch.Tensor:
        if type(tools.backbone.unet).__name__ != "UNet2DConditionModel":
            raise ConfigError(f"PromptToPrompt exchanges a UNet's cross-attention maps; the {tools.backbone.family} "
                              f"backbone is a transformer with joint text-image attention, which it does not handle: "
                              f"use decoder framework.stages.FlowEditDecode or the default ITO decode instead.")
        chunk = tools.denoiser.chunk_size
        if chunk is not None and chunk < 4:
            raise ConfigError(f"PromptToPrompt decodes source and edit as one UNet batch of 4 (with CFG); "
                              f"unet_chunk_size {chunk} would split it: set model.unet_chunk_size >= 4 or null.")
        tokenizer = tools.backbone.tokenizer
        ids = lambda prompt: tokenizer(prompt).input_ids  # noqa: E731 - with start and end tokens
        src, edit = state.sides.source, state.sides.edit
        length = src[0].parts[tools.denoiser.text_index].length
        exchange = AttentionExchange(*token_mapping(ids(state.request.source_prompt), ids(state.request.edit_prompt),
                                                    length))
        scale = tools.sampling.guidance_scale
        exchange.first_pair = 2 if scale != 1.0 else 0
        n, inverted = state.n_final, state.inverted

        def before_step(i: int, t: int, y: torch.Tensor) -> torch.Tensor:
            exchange.cross, exchange.self_attn = i < self.cross_replace * n, i < self.self_replace * n
            return y

        cond = Conditioning.cat([src[0], edit[0]])
        index = tools.denoiser.text_index

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            uncond = [src[1], edit[1]]
            text = None if not inverted.uncond_text else inverted.uncond_text.get(t)
            if text is not None:  # the inversion's per-step unconditional text, in both branches
                uncond = [u.with_part(index, text) for u in uncond]
            return tools.denoiser(x, t, cond, Conditioning.cat(uncond), scale)

        callback = tools.step_callback("final")
        unet = tools.backbone.unet
        saved = unet.attn_processors
        unet.set_attn_processor({name: ExchangingAttnProcessor(exchange) for name in saved})
        try:
            start = inverted.trajectory[state.schedule.decode_timesteps(n)[0]]
            y0 = decode(torch.cat([start, start]), eps, state.schedule, n, before_step,
                             lambda i, t, y: callback(i, t, y[1:]), tools.corrections(inverted))
        finally:
            unet.set_attn_processor(saved)
        self.last_source = y0[:1]
        return y0[1:]
