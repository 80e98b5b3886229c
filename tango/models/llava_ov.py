"""LLaVA-OneVision adapter (``LlavaOnevisionForConditionalGeneration``, transformers 5.23).

Pre-LLM pruning path, public seams only (``get_video_features`` and ``inputs_embeds``; no patched code):
vision tower -> projector -> bilinear pooling (``get_video_features``) -> method -> ``inputs_embeds`` with exactly
as many video placeholders as kept tokens + the single newline -> ``generate``. Positions are re-indexed
contiguously, as LLaVA's own pre-LLM pruning does. With every token kept this is bit-exact with
``model.generate(**processor_inputs)`` (tested).

In-LLM stages (FastV, DyCoke's KV stage, Tango's LLaVA-Video stage) are the method's own ``decoder_hooks`` on the
:class:`~tango.hooks.DecoderView` this adapter describes; dropped positions keep their original positions.
``tokens_layer_avg`` records the visual tokens averaged over decoder layers, the quantity ``budget`` means for them.

Attention source for methods that need one (Tango): the SigLIP attention-pooling head's probe attention, averaged
over heads and pooled like the features. It is read with a forward hook on ``vision_tower.head.attention`` while the
tower runs; towers without a head (the llava-hf checkpoints) need the head loaded from the SigLIP checkpoint, which
is part of the model-adapter issue and raises a clear error until then.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tango.flops import llava_ov_prefill_flops, llm_prefill_macs_paper
from tango.methods.base import PruningMethod
from tango.models import full_configs
from tango.models.base import FamilySpec, Generation, VideoAdapter, load_pretrained, prefill_and_decode
from tango.models.tiny import build_tiny_llava_ov
from tango.timing import Stopwatch
from tango.video import Clip


def _tokens(layout: str):
    def video_tokens(config, frames: int, frame_hw=None) -> tuple[int, int]:
        span = full_configs.llava_video_span(config, frames, layout)
        return span["visual"], span["newlines"]
    return video_tokens


def _prefill_flops(config, frames: int, tokens_per_layer, frame_hw=None) -> dict:
    return llava_ov_prefill_flops(config, frames, tokens_per_layer, with_head=True)


class LlavaOneVision(VideoAdapter):
    family = "llava_ov"
    spec = FamilySpec(display_name="LLaVA-OV-7B", hf_class="LlavaOnevisionForConditionalGeneration",
                      hub_id="llava-hf/llava-onevision-qwen2-7b-ov-hf", full_config=full_configs.llava_ov_7b_config,
                      offline_processor=full_configs.llava_processor, build_tiny=build_tiny_llava_ov,
                      video_tokens=_tokens("llava_ov"), prefill_flops=_prefill_flops)
    preprocessing_options = ("chat_template",)

    def __init__(self, pretrained: str, device: torch.device, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny: bool = False, seed: int = 0,
                 pooling_head: str | None = None):
        """``pooling_head``: hub id or local path of a SigLIP checkpoint whose attention-pooling head supplies the
        ``pooling_head`` attention source when this checkpoint's tower has none (llava-hf keeps no head)."""
        from transformers import LlavaOnevisionForConditionalGeneration

        self._setup(*load_pretrained(LlavaOnevisionForConditionalGeneration, self.family, pretrained, device, dtype,
                                     attn_implementation, tiny, seed), device)
        self.pooling_head_source = pooling_head

    def _setup(self, model, processor, device) -> None:
        super()._setup(model, processor, device)
        self.pooling_head_source, self._pooling_head = None, None
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        self.patch_grid = (side, side)
        self.grid = (math.ceil(side / 2), math.ceil(side / 2))  # apply_pooling's output grid

    def prepare(self, clip: Clip, question: str) -> dict:
        """Processor inputs on the model's device: ``input_ids [1, S]``, ``pixel_values_videos [1, F, 3, H, W]``."""
        inputs = self.processor(text=self.prompt(question), videos=[clip.frames], return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items()}

    @contextmanager
    def _capture_attention(self, source: str | None):
        """While the tower runs, capture the method's attention source into the yielded dict: ``attn [F, Np]``
        (and ``metric [F, Np, head_dim]`` for ``last_layer``; ``global [F, C]``, the pooling head's output, the
        frame-global feature, for ``pooling_head``), ``Np`` = patches per frame."""
        captured: dict[str, torch.Tensor] = {}
        tower = self.model.model.vision_tower
        if source is None:
            yield captured
            return
        if source == "pooling_head" and getattr(tower, "head", None) is not None:
            # nn.MultiheadAttention returns weights averaged over heads: [F, 1, Np].
            handles = [tower.head.attention.register_forward_hook(
                lambda mod, args, out: captured.__setitem__("attn", out[1][:, 0])),
                tower.head.register_forward_hook(lambda mod, args, out: captured.__setitem__("global", out))]
            handle = _Handles(handles)
        elif source == "pooling_head":
            head = self._load_pooling_head()
            inner = head.attention.register_forward_hook(
                lambda mod, args, out: captured.__setitem__("attn", out[1][:, 0]))

            def on_tower(mod, args, out):  # the head reads the tower's post-LN output, as inside SigLIP
                captured["global"] = head(out.last_hidden_state)  # [F, C]; its attention is captured on the way
            handle = _Handles([inner, tower.register_forward_hook(on_tower)])
        elif source == "last_layer":
            handle = tower.encoder.layers[-1].self_attn.register_forward_hook(
                lambda mod, args, kwargs, out: captured.update(_received_attention(mod, kwargs["hidden_states"])),
                with_kwargs=True)
        else:
            raise ValueError(f"attention source {source!r}; valid: 'pooling_head', 'last_layer'")
        try:
            yield captured
        finally:
            handle.remove()

    def _encode(self, pixel_values_videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, F, 3, H, W]`` -> pooled projected tokens ``x [F, L, D]`` and the newline embedding ``[1, D]``."""
        video = self.model.get_video_features(pixel_values_videos=pixel_values_videos).pooler_output[0]
        return video[:-1].view(pixel_values_videos.shape[1], -1, video.shape[-1]), video[-1:]

    def _assemble(self, sel, newline: torch.Tensor, method, n_frames: int):
        """The LLM's visual span ``[S, D]``, how many of its leading positions in-LLM methods may drop, and the mask
        ``[S]`` of its visual tokens (False for newlines). LLaVA-OV (``one_token``): the kept tokens then one
        newline, which in-LLM methods never drop."""
        m = sel.tokens.shape[0]
        mask = torch.ones(m + 1, dtype=torch.bool)
        mask[-1] = False
        return torch.cat([sel.tokens.to(newline.dtype), newline]), m, mask

    def _load_pooling_head(self):
        """The SigLIP attention-pooling head from ``pooling_head`` (loaded once; hub downloads are cached by HF)."""
        if self._pooling_head is None:
            if self.pooling_head_source is None:
                raise ValueError("this method's attention source is SigLIP's attention-pooling head, which this "
                                 "checkpoint's tower lacks; set model.pooling_head to a SigLIP checkpoint, e.g. "
                                 "google/siglip-so400m-patch14-384")
            tower = self.model.model.vision_tower
            self._pooling_head = load_pooling_head(self.pooling_head_source, tower.config).to(
                device=self.device, dtype=next(tower.parameters()).dtype).eval()
        return self._pooling_head

    def _pool_like_features(self, t: torch.Tensor) -> torch.Tensor:
        """``[F, Hp*Wp(, C)]`` per-patch values -> ``[F, L(, C)]``, with the features' bilinear resize."""
        f = t.shape[0]
        c = t.view(f, *self.patch_grid, -1).permute(0, 3, 1, 2).float()
        pooled = F.interpolate(c, size=list(self.grid), mode="bilinear").flatten(2).transpose(1, 2)
        return pooled[..., 0] if t.dim() == 2 else pooled

    @torch.inference_mode()
    def generate(self, inputs: dict, clip: Clip, method: PruningMethod, budget: float,
                 max_new_tokens: int = 16, stop: list[str] | None = None) -> Generation:
        self.check_method(method)
        sw = Stopwatch(self.device)
        t_start = sw.now()
        source = method.attention_source if method.needs_attention else None
        with self._capture_attention(source) as cap, sw("vision"):
            x, newline = self._encode(inputs["pixel_values_videos"])
        n = x.shape[0]
        attn = self._pool_like_features(cap["attn"]) if "attn" in cap else None
        # last_layer: its keys, pooled like the features; pooling_head: the head's frame-global output [F, C]
        metric = self._pool_like_features(cap["metric"]) if "metric" in cap else cap.get("global")
        timestamps = torch.as_tensor(clip.timestamps, dtype=torch.float32, device=self.device)
        with sw("pruning"):
            sel = method.prune(x, budget=budget, attn=attn, timestamps=timestamps, grid=self.grid, metric=metric)
        visual, n_vis, token_mask = self._assemble(sel, newline.to(x.dtype), method, n)
        ids = _resize_span(inputs["input_ids"], self.video_token_id, visual.shape[0])
        embeds = self.model.get_input_embeddings()(ids)
        embeds[ids == self.video_token_id] = visual.to(embeds.dtype)

        text, stats, per_layer, ms = prefill_and_decode(
            self.model, self.processor, sw, t_start, embeds=embeds, ids=ids, sel=sel, method=method, budget=budget,
            video_token_id=self.video_token_id, n_vis=n_vis, token_mask=token_mask, max_new_tokens=max_new_tokens,
            stop=stop, reply=self.preprocessing.reply)
        flops = llava_ov_prefill_flops(self.model.config, n, per_layer,
                                       with_head=getattr(self.model.model.vision_tower, "head", None) is not None)
        stats.update({k.replace("flops_", "tflops_"): v / 1e12 for k, v in flops.items()})
        stats["tflops_prefill"] = sum(flops.values()) / 1e12
        stats["tflops_llm_paper"] = llm_prefill_macs_paper(self.model.config.text_config, per_layer) / 1e12
        stats["achieved_tflop_s"] = stats["tflops_prefill"] / (ms["ttft"] / 1e3) if ms["ttft"] > 0 else None
        return Generation(text=text, stats=stats)


class _Handles:
    """Several hook handles removed as one."""

    def __init__(self, handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def load_pooling_head(source: str, vision_config):
    """SigLIP's ``SiglipMultiheadAttentionPoolingHead`` with the weights of the checkpoint at ``source`` (a hub id or a
    local directory; only the ``*head.*`` tensors are read). Strict: every head weight must be found."""
    from pathlib import Path

    from safetensors import safe_open
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    path = Path(source)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source, allow_patterns=["*.safetensors"]))
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if key.startswith(("vision_model.head.", "head.")):
                    state[key.split("head.", 1)[1]] = f.get_tensor(key)
    if not state:
        raise ValueError(f"no attention-pooling head weights (vision_model.head.* / head.*) in {source!r}")
    head = SiglipMultiheadAttentionPoolingHead(vision_config)
    head.load_state_dict(state)
    return head


def _resize_span(ids: torch.Tensor, token_id: int, length: int) -> torch.Tensor:
    """``ids [1, S]`` with its one contiguous run of ``token_id`` placeholders resized to ``length``."""
    pos = torch.nonzero(ids[0] == token_id)[:, 0]
    if pos.numel() == 0 or int(pos[-1] - pos[0]) + 1 != pos.numel():
        raise ValueError(f"expected one contiguous run of video placeholders (id {token_id}) in the prompt")
    run = ids.new_full((1, length), token_id)
    return torch.cat([ids[:, : int(pos[0])], run, ids[:, int(pos[-1]) + 1:]], dim=1)


def _received_attention(attn_mod, hidden: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
    """Attention each patch receives in a SigLIP attention layer, averaged over heads and queries, recomputed from
    the layer's own q/k projections so the tower keeps its fast kernel (no eager switch).

    Args:
        hidden: ``[F, Np, C]`` the layer's input (after ``layer_norm1``).
    Returns:
        ``attn [F, Np]`` and ``metric [F, Np, head_dim]`` (keys averaged over heads).
    """
    f, n, _ = hidden.shape
    h, hd = attn_mod.num_heads, attn_mod.head_dim
    q = attn_mod.q_proj(hidden).view(f, n, h, hd).transpose(1, 2)
    k = attn_mod.k_proj(hidden).view(f, n, h, hd).transpose(1, 2)
    # Frames in chunks: the full [F, H, Np, Np] fp32 weights are ~1 GB at 32 frames x 16 heads x 729 patches.
    received = torch.cat([
        torch.softmax((qc @ kc.transpose(-1, -2)).float() * attn_mod.scale, dim=-1).mean(dim=(1, 2))
        for qc, kc in zip(q.split(chunk), k.split(chunk))])
    return {"attn": received, "metric": k.mean(1)}


class LlavaVideo(LlavaOneVision):
    """LLaVA-Video-7B on the LLaVA-OV architecture, fed as its own code feeds it: vision tower -> projector ->
    2x2 **average** pooling (27x27 -> 13x13 = 169 tokens per frame, not the OV bilinear 14x14) -> method -> a newline
    after each pooled row (``mm_newline_position = grid``). transformers' ``get_video_features`` hard-codes the OV
    pooling, so the tower and projector are called directly (public modules) and pooled here.

    Newlines: after each row that keeps at least one token (Tango's ``add_token_per_grid``), or after every row when
    the method sets ``grid_newlines = "all_rows"`` (HoliTom's VisionZip port). Methods must emit tokens in raster
    order per frame for this layout (checked). In-LLM methods see the whole span, newlines included.
    """

    family = "llava_video"
    spec = FamilySpec(display_name="LLaVA-Video-7B", hf_class="LlavaOnevisionForConditionalGeneration",
                      hub_id="llava-hf/LLaVA-Video-7B-Qwen2-hf", full_config=full_configs.llava_video_7b_config,
                      offline_processor=full_configs.llava_processor, build_tiny=build_tiny_llava_ov,
                      video_tokens=_tokens("llava_video"), prefill_flops=_prefill_flops)

    def _setup(self, model, processor, device) -> None:
        super()._setup(model, processor, device)
        h, w = self.patch_grid
        self.grid = (h // 2, w // 2)  # avg_pool2d(kernel 2, stride 2) floors: 27 -> 13

    def _encode(self, pixel_values_videos):
        m, cfg = self.model.model, self.model.config
        frames = pixel_values_videos[0]
        hidden = m.vision_tower(frames, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        feats = m.multi_modal_projector(hidden)  # [F, Hp*Wp, D]: the projector runs before pooling
        return self._pool_like_features(feats).to(feats.dtype), m.image_newline[None]

    def _pool_like_features(self, t):
        f = t.shape[0]
        c = t.view(f, *self.patch_grid, -1).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(c.float() if t.dim() == 2 else c, 2).flatten(2).transpose(1, 2)
        return pooled[..., 0] if t.dim() == 2 else pooled

    def _assemble(self, sel, newline, method, n_frames):
        idx, tokens, (h, w) = sel.indices, sel.tokens.to(newline.dtype), self.grid
        if idx.numel() > 1 and bool((idx[1:] < idx[:-1]).any()):
            # Rows need raster order; a method emitting another order (DyCoke's similarity order) is laid out by
            # position, as LLaVA-Video's own grid path does after pruning.
            order = idx.argsort()
            idx, tokens = idx[order], tokens[order]
        per_frame = h * w
        row = idx // per_frame * h + idx % per_frame // w  # global row id of each kept token
        if getattr(method, "grid_newlines", "surviving_rows") == "all_rows":
            n_rows = n_frames * h
            counts = torch.bincount(row, minlength=n_rows)
            ends = torch.cumsum(counts, 0) + torch.arange(1, n_rows + 1, device=idx.device) - 1
            pos = torch.arange(idx.numel(), device=idx.device) + row  # r newlines precede a token of row r
        else:
            last = torch.ones_like(row, dtype=torch.bool)
            last[:-1] = row[1:] != row[:-1]
            before = torch.cumsum(last, 0) - last.long()  # newlines already placed before each token
            pos = torch.arange(idx.numel(), device=idx.device) + before
            ends = pos[last] + 1
        out = newline.new_empty(idx.numel() + ends.numel(), newline.shape[-1])
        out[pos] = tokens
        out[ends] = newline.expand(ends.numel(), -1)
        mask = torch.ones(out.shape[0], dtype=torch.bool)
        mask[ends.cpu()] = False
        return out, out.shape[0], mask
