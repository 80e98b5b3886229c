"""Train the tiny LLaVA-OneVision on the synthetic video task, so pruning methods get an offline accuracy signal.

The model is the real ``LlavaOnevisionForConditionalGeneration`` (SigLIP with its attention-pooling head + Qwen2),
wider and shallower than ``tango.models.tiny.build_tiny_llava_ov`` (4 decoder layers of 128); the same byte-level
tokenizer, processor and chat template, so the harness loads the result with ``from_pretrained`` like any checkpoint.

Training data are rendered in memory from the generator's ``train`` split (``tango.data.synthetic.make_doc``, seed
streams disjoint from the evaluation split), at the task's frame count, sampled with the harness's
``sample_indices`` and passed through a yuv420p round trip (what an mp4 decoder returns, minus x264's own noise).
The prompt is the harness's: ``doc_to_text`` of the task template (question, lettered options, post prompt) inside
``adapter.prompt`` (the processor's chat template). The loss is cross-entropy on the answer letter and the
``<|im_end|>`` that follows it (without the latter greedy decoding keeps writing after the letter and the reply no
longer parses as a letter).

Two things make it learn in minutes on a CPU and make it usable under pruning:

* auxiliary linear probes (``AuxHeads``, training only, not saved): per visual token, the object colour from the
  LLM input and the frame index from decoder layer 2. Without them the answer loss stayed at ln 4 for hundreds of
  steps (one letter per video is a weak signal);
* token dropout (``random_keep``): half the training videos are shown with a random 5-60 % subset of their tokens,
  laid out exactly as the harness lays out a pre-LLM method's output (``pruned_forward``). A model trained on full
  sequences only failed even on the global control question once the sequence got shorter (Tango at 10 %: 37.5 %
  on ``background``), so every method looked alike; trained this way, what a method keeps decides the answer.

This is a sanity signal for pruning behaviour (does a method keep the tokens that carry the answer?), not a
substitute for the real benchmarks.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tango.data import synthetic as S
from tango.data.task_template.utils import DEFAULT_POST_PROMPT, LETTERS, doc_to_text, parse_answer_letter
from tango.video import sample_indices

# The pruning-study types (localized / temporal / counting / global): the task the trained model is evaluated on.
TRAIN_TYPES = tuple(S.PRUNING_QUESTION_TYPES)


@dataclass
class TrainConfig:
    out_dir: str = "checkpoints/tiny_llava_ov_trained"
    seed: int = 0                      # weights, and the train split's generator seed
    steps: int = 2400
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    min_lr_frac: float = 0.05          # cosine decay to lr * min_lr_frac
    grad_clip: float = 1.0
    question_types: tuple[str, ...] = TRAIN_TYPES
    video_frames: int = 32             # frames of a rendered video (the default task's num_frames)
    num_frames: int = 16               # frames the model sees (configs/model: num_frames)
    size: int = 112
    eval_seed: int = 4321              # held-out test split used during training (the evaluation sweep uses others)
    eval_docs: int = 150               # held-out docs (30 per type with 5 types)
    eval_every: int = 200
    log_every: int = 25
    threads: int = 2
    text_hidden: int = 128
    text_layers: int = 4
    vision_hidden: int = 96
    vision_layers: int = 2
    aux_weight: float = 0.5            # weight of the two auxiliary losses (0 disables them)
    aux_frame_layer: int = 2           # decoder layer whose output predicts each visual token's frame
    drop_prob: float = 0.5             # fraction of training videos shown with a random subset of their tokens
    drop_keep: tuple[float, float] = (0.05, 0.6)  # kept fraction of such a video, uniform in this range
    log_path: str | None = None        # JSONL log; default <out_dir>/train_log.jsonl
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig):
    """A fresh (seeded) tiny ``LlavaOnevisionForConditionalGeneration`` and its processor (head on, 112 px, patch
    14: 8x8 patches pooled to 4x4 = 16 tokens per frame)."""
    from tango.models.tiny import tiny_llava_ov

    model, proc = tiny_llava_ov(cfg.seed, size=cfg.size, vision_hidden=cfg.vision_hidden,
                                vision_layers=cfg.vision_layers, vision_heads=4, text_hidden=cfg.text_hidden,
                                text_layers=cfg.text_layers, max_position_embeddings=2048, tie_word_embeddings=True)
    model.generation_config.eos_token_id = proc.tokenizer.eos_token_id
    model.generation_config.pad_token_id = proc.tokenizer.pad_token_id
    return model, proc


def prompt_text(processor, doc: dict) -> str:
    """Exactly what the harness feeds for ``doc``: the task's ``doc_to_text`` (default prompt kwargs of the task
    YAML) inside ``LlavaOneVision.prompt`` (the chat template with one video)."""
    question = doc_to_text(doc, {"pre_prompt": "", "post_prompt": DEFAULT_POST_PROMPT})
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


class Encoder:
    """Docs -> model inputs, with the processor's token expansion and pixel normalisation done directly (both
    checked against the processor in the tests)."""

    def __init__(self, processor, num_frames: int, video_frames: int, size: int):
        self.processor, self.tok = processor, processor.tokenizer
        self.num_frames, self.video_frames, self.size = num_frames, video_frames, size
        self.indices = sample_indices(video_frames, num_frames, avg_fps=8.0)
        vp = processor.video_processor
        self.mean = torch.tensor(vp.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(vp.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.video_id = self.tok.convert_tokens_to_ids("<video>")
        dummy = np.zeros((num_frames, size, size, 3), np.uint8)
        probe = processor(text="<video>", videos=[dummy], return_tensors="pt")["input_ids"][0]
        self.n_video_tokens = int((probe == self.video_id).sum())
        self.grid = int(round(((self.n_video_tokens - 1) // num_frames) ** 0.5))  # pooled tokens per side (+1 newline)
        self.eos_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.letter_ids = [self.tok.convert_tokens_to_ids(c) for c in LETTERS]
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            raw = self.tok(text, add_special_tokens=False)["input_ids"]
            i = raw.index(self.video_id)
            self._cache[text] = raw[:i] + [self.video_id] * self.n_video_tokens + raw[i + 1:]
        return self._cache[text]

    def frames(self, doc: dict) -> np.ndarray:
        """``[num_frames, H, W, 3]`` uint8: render the frames the harness samples, yuv420p round trip."""
        video = S.render_video(doc["background"], doc["objects"], self.size, self.video_frames, self.indices)
        return yuv_roundtrip(video)

    def token_colors(self, doc: dict, min_pixels: int = 40) -> torch.Tensor:
        """``[num_frames * g * g]`` long, frame-major like the video tokens: for each pooled token (a
        ``size/g``-pixel square, ``g*g`` tokens per frame) the object colour covering most of it (1 + index in
        ``COLORS``), or 0 if no object covers ``min_pixels`` pixels. Rendered from the scene, not the pixels."""
        names = list(S.COLORS)
        objs = [{**o, "rgb": [names.index(o["color"]) + 1] * 3} for o in doc["objects"]]
        black = {"kind": "plain", "axis": "horizontal", "rgb0": [0, 0, 0], "rgb1": [0, 0, 0]}
        lab = S.render_video(black, objs, self.size, self.video_frames, self.indices)[..., 0]  # [T, H, W]
        g = self.grid
        b = self.size // g
        onehot = lab.reshape(len(lab), g, b, g, b)[..., None] == np.arange(1, len(names) + 1)
        counts = onehot.sum(axis=(2, 4)).reshape(len(lab) * g * g, len(names))
        cls = counts.argmax(-1) + 1
        return torch.from_numpy(np.where(counts.max(-1) >= min_pixels, cls, 0))

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def batch(self, docs: list[dict], labels: bool = False) -> dict[str, torch.Tensor]:
        """Right-padded prompts + the answer letter and ``<|im_end|>`` appended (positions of the prompt's last
        token and of the letter are returned: their next-token targets are the letter and ``<|im_end|>``); with
        ``labels`` the per-token colour targets of the auxiliary loss too."""
        seqs = [self.ids(prompt_text(self.processor, d)) + [self.letter_ids[d["answer_index"]]] for d in docs]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(docs), n), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(docs), n), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        last = torch.tensor([len(s) - 2 for s in seqs])  # the prompt's last token: predicts the letter
        pv = torch.stack([self.pixels(self.frames(d)) for d in docs])
        letters = torch.tensor([self.letter_ids[d["answer_index"]] for d in docs])
        out = {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pv, "last": last, "letter": letters}
        if labels:
            out["token_colors"] = torch.stack([self.token_colors(d) for d in docs])
        return out


def yuv_roundtrip(frames: np.ndarray) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 through BT.601 limited-range yuv420p and back (2x2 chroma averaging, nearest
    upsampling), vectorised over frames; matches ``synthetic.yuv420p_to_rgb(synthetic.rgb_to_yuv420p(f))``."""
    rgb = frames.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = np.clip(np.rint(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0), 0, 255)
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    t, h, w = y.shape

    def sub(c):
        c = c.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.clip(np.rint(c), 0, 255).repeat(2, 1).repeat(2, 2) - 128.0

    u, v = sub(cb), sub(cr)
    y = y - 16.0
    out = np.stack([1.164383 * y + 1.596027 * v, 1.164383 * y - 0.391762 * u - 0.812968 * v,
                    1.164383 * y + 2.017232 * u], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def answer_logits(model, batch: dict[str, torch.Tensor], hidden: bool = False):
    """Full-vocabulary logits at the prompt's last token (-> letter) and at the letter (-> ``<|im_end|>``); with
    ``hidden`` also the tuple of hidden states (embeddings first)."""
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      pixel_values_videos=batch["pixel_values_videos"], output_hidden_states=hidden)
    h = out.last_hidden_state
    rows = torch.arange(h.shape[0])
    logits = model.lm_head(h[rows, batch["last"]]), model.lm_head(h[rows, batch["last"] + 1])
    return (*logits, out.hidden_states) if hidden else logits


def pruned_forward(model, batch: dict[str, torch.Tensor], keep: list[torch.Tensor | None], video_id: int,
                   hidden: bool = False):
    """``answer_logits`` with video ``b`` reduced to its tokens ``keep[b]`` (sorted indices into ``T*g*g``; None =
    all), laid out as the harness lays out a pre-LLM method's output: the kept tokens in order, then the newline,
    the prompt's placeholder run resized to match, positions re-indexed (``LlavaOneVision.generate``).

    Returns ``(letter logits [B, V], eos logits [B, V], hidden states or None, video positions per row)``.
    """
    feats = model.model.get_video_features(pixel_values_videos=batch["pixel_values_videos"]).pooler_output
    embed = model.get_input_embeddings()
    rows, spans = [], []
    for b, k in enumerate(keep):
        ids = batch["input_ids"][b, : int(batch["attention_mask"][b].sum())]
        pos = (ids == video_id).nonzero()[:, 0]
        start, n_tok = int(pos[0]), pos.numel() - 1  # the run = tokens + 1 newline
        k = torch.arange(n_tok) if k is None else k
        visual = torch.cat([feats[b, k], feats[b, n_tok:]])
        rows.append(torch.cat([embed(ids[:start]), visual, embed(ids[start + n_tok + 1:])]))
        spans.append(start + torch.arange(k.numel()))
    n = max(r.shape[0] for r in rows)
    emb = rows[0].new_zeros(len(rows), n, rows[0].shape[-1])
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for b, r in enumerate(rows):
        emb[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
    out = model.model.language_model(inputs_embeds=emb, attention_mask=mask, output_hidden_states=hidden)
    last = mask.sum(1) - 2  # the prompt's last token (the letter follows it)
    h, r = out.last_hidden_state, torch.arange(len(rows))
    return model.lm_head(h[r, last]), model.lm_head(h[r, last + 1]), out.hidden_states, spans


def random_keep(n_videos: int, n_tokens: int, cfg: "TrainConfig", gen: torch.Generator) -> list[torch.Tensor | None]:
    """Per video: None (all tokens) with probability ``1 - drop_prob``, else a uniform random subset of
    ``round(r * n_tokens)`` tokens (at least 1), ``r ~ U(drop_keep)``, sorted (raster order, like the methods)."""
    lo, hi = cfg.drop_keep
    out = []
    for _ in range(n_videos):
        if float(torch.rand((), generator=gen)) >= cfg.drop_prob:
            out.append(None)
            continue
        r = lo + (hi - lo) * float(torch.rand((), generator=gen))
        m = max(1, round(r * n_tokens))
        out.append(torch.randperm(n_tokens, generator=gen)[:m].sort().values)
    return out


class AuxHeads(torch.nn.Module):
    """Linear probes used only during training (not saved): they give the vision path and the first decoder
    layers a dense signal from step one, which the single answer letter per video does not.

    * colour: the LLM input at each visual token (the projected, pooled feature) -> which object colour covers that
      token (``Encoder.token_colors``), so visual tokens carry object identity linearly;
    * frame: the output of decoder layer ``frame_layer`` at each visual token -> its frame index, so the residual
      stream carries absolute time, which 1-D RoPE only gives relatively (needed by "when" / "order").
    """

    def __init__(self, hidden: int, n_colors: int, n_frames: int, frame_layer: int):
        super().__init__()
        self.color = torch.nn.Linear(hidden, n_colors + 1)
        self.frame = torch.nn.Linear(hidden, n_frames)
        self.frame_layer, self.n_frames = frame_layer, n_frames
        self.register_buffer("color_weight", torch.tensor([0.2] + [1.0] * n_colors))

    def forward(self, hidden_states, spans: list[torch.Tensor], keep: list[torch.Tensor | None],
                colors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(colour loss, frame loss, colour accuracy on object tokens)``. ``spans[b]``: sequence positions of
        video ``b``'s kept tokens, ``keep[b]``: their token indices (None = all); ``colors [B, T*g*g]``."""
        n = colors.shape[1]
        per_frame = n // self.n_frames
        emb, mid, col, frame = [], [], [], []
        for b, (pos, k) in enumerate(zip(spans, keep)):
            k = torch.arange(n) if k is None else k
            emb.append(hidden_states[0][b, pos])
            mid.append(hidden_states[self.frame_layer][b, pos])
            col.append(colors[b, k])
            frame.append(torch.div(k, per_frame, rounding_mode="floor"))
        logits, col = self.color(torch.cat(emb)), torch.cat(col)
        l_color = F.cross_entropy(logits, col, weight=self.color_weight)
        l_frame = F.cross_entropy(self.frame(torch.cat(mid)), torch.cat(frame))
        obj = col > 0
        acc = (logits.argmax(-1)[obj] == col[obj]).float().mean() if obj.any() else torch.tensor(float("nan"))
        return l_color, l_frame, acc


# ----------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_docs(model, enc: Encoder, docs: list[dict], batch_size: int = 32) -> dict[str, Any]:
    """Accuracy of the greedy first token (full vocabulary argmax == the answer letter) and of ``<|im_end|>``
    after it, overall and per question type (0-100)."""
    model.eval()
    hits, eos_hits = [], []
    for i in range(0, len(docs), batch_size):
        chunk = docs[i:i + batch_size]
        batch = enc.batch(chunk)
        la, le = answer_logits(model, batch)
        hits += (la.argmax(-1) == batch["letter"]).tolist()
        eos_hits += (le.argmax(-1) == enc.eos_id).tolist()
    return summarize(docs, hits, extra={"eos_acc": 100.0 * float(np.mean(eos_hits))})


def summarize(docs: list[dict], hits: list, extra: dict | None = None) -> dict[str, Any]:
    res = {"acc": 100.0 * float(np.mean(hits)), "n": len(hits), **(extra or {})}
    for t in dict.fromkeys(d["question_type"] for d in docs):
        sel = [h for h, d in zip(hits, docs) if d["question_type"] == t]
        res[f"acc/{t}"] = 100.0 * float(np.mean(sel))
    return res


@torch.no_grad()
def evaluate_with_adapter(pretrained: str | Path, task_dir: str | Path, method: str = "none", budget: float = 1.0,
                          num_frames: int = 16, limit: int | None = None) -> dict[str, Any]:
    """The harness path on an mp4 task folder (decode -> processor -> adapter.generate -> parse_answer_letter),
    without lmms-eval: what ``python run.py`` measures, minus the runner."""
    from tango.methods import METHODS
    from tango.models.llava_ov import LlavaOneVision
    from tango.video import read_clip

    adapter = LlavaOneVision(str(pretrained), device=torch.device("cpu"), dtype="float32")
    m = METHODS[method]()
    docs = S.load_docs(task_dir)[:limit]
    hits, parsed = [], 0
    for d in docs:
        clip = read_clip(d["video"], num_frames, backend="pyav")
        question = doc_to_text(d, {"pre_prompt": "", "post_prompt": DEFAULT_POST_PROMPT})
        gen = adapter.generate(adapter.prepare(clip, question), clip, m, budget, max_new_tokens=8)
        letter = parse_answer_letter(gen.text, d["options"])
        parsed += letter is not None
        hits.append(letter == d["answer"])
    return summarize(docs, hits, extra={"parsed": parsed})


# ---------------------------------------------------------------------------------------------- pruning sweep
SWEEP_METHODS = ("tango", "fastv", "visionzip", "dycoke", "holitom", "fastvid", "flashvid", "vidcom2", "evs",
                 "random", "uniform_pool")
SWEEP_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)


def sweep_cells(seeds=(0, 1, 2), methods=SWEEP_METHODS, budgets=SWEEP_BUDGETS, model: str = "tiny_llava_ov_trained",
                task: str = "synthetic_pruning", num_videos: int = 100, extra: list[str] | tuple[str, ...] = (),
                method_extra: list[str] | tuple[str, ...] = ()) -> list[list[str]]:
    """The Hydra override lists of the accuracy-vs-budget sweep: per evaluation seed ``k`` (run ``seed=k``, task
    ``task.synthetic.seed=1234+k``, generated in its own folder: the task config names it after its parameters), the
    full-token run and every
    method x budget (per-model method settings come from ``configs/model_method/<model>_<method>.yaml``). ``extra``
    overrides go to every cell, ``method_extra`` to the method cells only (a method setting and its ``variant``
    label: the full-token run stays the standard one, and resumes)."""
    cells = []
    for k in seeds:
        base = [f"model={model}", f"task={task}", f"seed={k}", f"task.synthetic.seed={1234 + k}",
                f"task.synthetic.num_videos={num_videos}", "logger=[csv]", "fail_fast=false", *extra]
        cells.append([*base, "method=none"])
        cells += [[*base, f"method={m}", f"budget={b}", *method_extra] for m in methods for b in budgets]
    return cells


def run_cell(overrides: list[str]):
    """``python run.py <overrides>`` in this process (one Hydra composition and one runner call)."""
    from tango.config import compose
    from tango.runner import run

    return run(compose(overrides))


# ------------------------------------------------------------------------------------------------------- training
def set_determinism(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover - CPU supports it
        pass


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train from ``cfg.seed``; write the checkpoint (``save_pretrained`` + processor) and ``train_log.jsonl`` /
    ``train_summary.json`` into ``cfg.out_dir``; return the summary."""
    from tqdm import tqdm

    set_determinism(cfg.seed, cfg.threads)
    model, proc = build_model(cfg)
    enc = Encoder(proc, cfg.num_frames, cfg.video_frames, cfg.size)
    spec = S.SceneSpec(size=cfg.size, num_frames=cfg.video_frames, fps=8)
    types = list(cfg.question_types)
    eval_docs = [S.make_doc(i, spec=spec, seed=cfg.eval_seed, question_types=types, split="test")
                 for i in range(cfg.eval_docs)]
    aux = AuxHeads(model.config.text_config.hidden_size, len(S.COLORS), cfg.num_frames, cfg.aux_frame_layer)
    params = [*model.named_parameters(), *(("aux." + n, p) for n, p in aux.named_parameters())]
    decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    use_aux = cfg.aux_weight > 0
    drop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(cfg.log_path) if cfg.log_path else out_dir / "train_log.jsonl"
    log = open(log_path, "w")
    n_params = sum(p.numel() for p in model.parameters())
    log.write(json.dumps({"event": "start", "config": asdict(cfg), "params": n_params}) + "\n")
    t0 = time.time()
    run_loss, run_hits, run_n, run_aux = 0.0, 0, 0, np.zeros(3)
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress, mininterval=2.0)
    last_eval: dict[str, Any] = {}
    for step in bar:
        model.train()
        docs = [S.make_doc(step * cfg.batch_size + j, spec=spec, seed=cfg.seed, question_types=types, split="train")
                for j in range(cfg.batch_size)]
        batch = enc.batch(docs, labels=use_aux)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        keep = random_keep(len(docs), enc.n_video_tokens - 1, cfg, drop_gen)
        la, le, hs, spans = pruned_forward(model, batch, keep, enc.video_id, hidden=use_aux)
        loss_letter = F.cross_entropy(la, batch["letter"])
        loss_eos = F.cross_entropy(le, torch.full_like(batch["letter"], enc.eos_id))
        loss = loss_letter + loss_eos
        if use_aux:
            l_color, l_frame, color_acc = aux(hs, spans, keep, batch["token_colors"])
            loss = loss + cfg.aux_weight * (l_color + l_frame)
            run_aux += [float(l_color.detach()), float(l_frame.detach()), float(color_acc)]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
        opt.step()
        run_loss += float(loss_letter.detach())
        run_hits += int((la.argmax(-1) == batch["letter"]).sum())
        run_n += len(docs)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n_steps = run_n / len(docs)
            rec = {"event": "train", "step": step + 1, "loss": run_loss / n_steps,
                   "loss_eos": float(loss_eos), "train_acc": 100.0 * run_hits / run_n, "lr": lr_at(step, cfg),
                   "wall_s": round(time.time() - t0, 1)}
            if use_aux:
                rec.update(zip(("aux_color_loss", "aux_frame_loss", "aux_color_acc"), (run_aux / n_steps).tolist()))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_acc']:.1f}")
            run_loss, run_hits, run_n, run_aux = 0.0, 0, 0, np.zeros(3)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            last_eval = evaluate_docs(model, enc, eval_docs)
            log.write(json.dumps({"event": "eval", "step": step + 1, "wall_s": round(time.time() - t0, 1),
                                  **last_eval}) + "\n")
            log.flush()
            bar.write(f"[eval step {step + 1}] " + " ".join(f"{k}={v:.1f}" for k, v in last_eval.items()
                                                           if k.startswith("acc") or k == "eos_acc"))
            if step + 1 < cfg.steps:  # an intermediate checkpoint: usable if a long run is cut short
                save_checkpoint(model.eval(), proc, out_dir)
    wall = time.time() - t0
    model.eval()
    save_checkpoint(model, proc, out_dir)
    summary = {"steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "wall_s": round(wall, 1),
               "params": n_params, "heldout_eval_seed": cfg.eval_seed, "heldout": last_eval,
               "torch": torch.__version__, "threads": cfg.threads, "config": asdict(cfg)}
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(summary))
    log.write(json.dumps({"event": "end", **summary}) + "\n")
    log.close()
    return summary


def model_card(summary: dict[str, Any]) -> str:
    """The checkpoint's README: how it was produced and what it reached (from ``train_summary.json``)."""
    cfg, ev = summary["config"], summary["heldout"]
    rows = "\n".join(f"| {k.split('/', 1)[1]} | {v:.1f} |" for k, v in ev.items() if k.startswith("acc/"))
    cmd = cfg.get("extra", {}).get("command", "python scripts/train_tiny.py")
    return f"""# tiny_llava_ov_trained

A tiny `LlavaOnevisionForConditionalGeneration` (SigLIP {cfg['vision_layers']}x{cfg['vision_hidden']} with its
attention-pooling head + Qwen2 {cfg['text_layers']}x{cfg['text_hidden']}, {summary['params']:,} parameters, byte-level
tokenizer) trained from scratch on the synthetic video task of this repository (`tango.data.synthetic`, train split,
question types {', '.join(cfg['question_types'])}). **A sanity signal for pruning behaviour, not a substitute for the
real benchmarks.**

Produced by `{cmd}` (seed {summary['seed']}, {summary['steps']} steps of batch {summary['batch_size']}, lr
{cfg['lr']}, auxiliary loss weight {cfg['aux_weight']}, token dropout on {cfg['drop_prob']:.0%} of the videos keeping
{cfg['drop_keep'][0]:.0%}-{cfg['drop_keep'][1]:.0%} of their tokens; torch {summary['torch']}, {summary['threads']} CPU
threads, {summary['wall_s'] / 60:.1f} min). Training log: `train_log.jsonl`; summary: `train_summary.json`.

Held-out accuracy (first answer token, full tokens, {ev['n']} docs of the test split, seed
{summary['heldout_eval_seed']}): **{ev['acc']:.1f} %** overall.

| question type | accuracy (%) |
|---|---|
{rows}
"""


def save_checkpoint(model, proc, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("use scripts/train_tiny.py")
