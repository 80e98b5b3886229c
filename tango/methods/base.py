"""Shared interface of the pruning methods: pure tensor code, no transformers import.

Notation: N frames, L visual tokens per frame after the model's pooling, D embedding size (the LLM's), M kept tokens.
A flat source index is ``frame * L + l``.

A *pre-LLM* method maps the projected, pooled video tokens ``x [N, L, D]`` to the tokens the LLM will see
(``Selection.tokens [M, D]``, in LLM order). An *in-LLM* method (FastV, Tango's LLaVA-Video stage, DyCoke stage 2)
additionally exposes pure selection functions over the attention row / hidden states it needs; the model adapters
wire those into the decoder. ``budget`` always means the fraction of visual tokens the LLM sees (layer-averaged for
methods that prune inside the LLM).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor


@dataclass
class Selection:
    """Output of a pre-LLM method.

    Attributes:
        tokens: ``[M, D]`` kept or merged tokens, in the order the LLM will see them.
        indices: ``[M]`` long, flat source index ``frame * L + l`` of each output token's representative token
            (for merged tokens: the token whose position the merged token takes).
        stats: realized counts for the result row: at least ``tokens_in`` (visual tokens before the method) and
            ``tokens_out`` (visual tokens entering the LLM); in-LLM methods add ``tokens_layer_avg`` (visual tokens
            averaged over decoder layers) once their in-LLM plan is known.
    """

    tokens: Tensor
    indices: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class SampleError(ValueError):
    """One sample this method cannot process as configured (e.g. a video too short for DyCoke's frame pairs). The
    harness records it as that sample's error (scored wrong, counted in the record) and goes on with the run."""


def check_budget(budget: float) -> float:
    """Return ``budget`` as a float, or raise if it is outside (0, 1]."""
    budget = float(budget)
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget={budget!r} is outside the valid range (0, 1]: it is the fraction of visual tokens kept")
    return budget


@dataclass
class PruningMethod:
    """Base of every method. Subclasses are dataclasses whose fields are the method's hyperparameters.

    The same dataclass is the Hydra schema of ``configs/method/<name>.yaml`` (registered in ``tango.config``), so a
    typo or a wrong type in a method config fails at compose time, and ``OmegaConf.to_object(cfg.method)`` returns
    the method object itself. Fields must therefore be OmegaConf-compatible (int, float, str, bool, Enum,
    ``typing.List``/``Optional`` of those). Hyperparameter checks live in ``__post_init__``. Each subclass sets
    ``name: str = "<registry key>"`` as its first field.
    """

    #: registry key = config file name; a dataclass field so that it is visible in the composed config.
    name: str = "base"
    #: ``"pre_llm"``, ``"in_llm"`` or ``"both"``: where the method acts.
    stage: ClassVar[str] = "pre_llm"
    #: True when ``prune`` needs the attention/saliency score ``attn``.
    needs_attention: ClassVar[bool] = False
    #: Which vision-side signal the adapter computes as ``attn`` (and ``metric``): ``"pooling_head"`` (the SigLIP
    #: attention-pooling head's probe attention, Tango/FastVID) or ``"last_layer"`` (attention received in the last
    #: vision layer, with that layer's keys as ``metric``, VisionZip). Ignored unless ``needs_attention``.
    attention_source: ClassVar[str] = "pooling_head"
    #: name in tables and plots (default: the registry key).
    display_name: ClassVar[str] = ""
    #: colour in plots, the same in every figure (default: a grey shade).
    color: ClassVar[str] = ""
    #: model families the method supports (``model.family``); empty = every family. Checked before a run loads.
    families: ClassVar[tuple[str, ...]] = ()
    #: regimes (``stats['regime']``, recorded as ``method/regime``) that are not the authors' algorithm, with the
    #: footnote tables print for a cell that ran in one; regimes not listed are the reference's own.
    nonstandard_regimes: ClassVar[dict[str, str]] = {}

    def prune(
        self,
        x: Tensor,
        *,
        budget: float,
        attn: Tensor | None = None,
        timestamps: Tensor | None = None,
        grid: tuple[int, int] | None = None,
        metric: Tensor | None = None,
    ) -> Selection:
        """Select / merge visual tokens before the LLM.

        Args:
            x: ``[N, L, D]`` projected, pooled visual tokens of one video.
            budget: fraction of visual tokens the LLM sees, in (0, 1].
            attn: ``[N, L]`` saliency score, for methods with ``needs_attention``.
            timestamps: ``[N]`` frame times in seconds.
            grid: pooled grid ``(H, W)`` with ``H * W == L``.
            metric: ``[N, L, Dm]`` similarity features for methods that take them from elsewhere than ``x``
                (VisionZip: the last vision layer's keys, pooled like the features).

        Returns:
            The kept tokens with their source indices and realized counts.
        """
        raise NotImplementedError

    def decoder_hooks(self, decoder, budget: float) -> AbstractContextManager[dict]:
        """The hooks this method attaches to the LLM decoder for one request, as a context manager that always
        detaches and yields a state dict (``keep`` / ``layer`` when positions are dropped at prefill, ``steps`` /
        ``pruned_steps`` for decode-time selection; the adapter reads them for the token and FLOPs counts).

        Args:
            decoder: the adapter's :class:`tango.hooks.DecoderView` (layers, visual span, attention-row helper).
            budget: in (0, 1); the adapter never calls this at budget 1, where every method is the identity.

        The default attaches nothing, for pre-LLM methods; a method whose ``stage`` says it acts inside the LLM must
        override it (never silently run as pre-LLM only). Build in-LLM stages from the primitives in
        :mod:`tango.hooks` (``drop_tokens_after``, ``restrict_decode_attention``)."""
        if self.stage != "pre_llm":
            raise NotImplementedError(f"method {self.name!r} has stage {self.stage!r} (it acts inside the LLM) but "
                                      f"does not implement decoder_hooks")
        return nullcontext({})

    @property
    def servable(self) -> bool:
        """True when the method acts before the LLM only and ``prune`` always returns exactly :meth:`count` tokens,
        so a serving engine can size the prompt before the vision encoder runs (vLLM writes that many video
        placeholders; a model returning another count kills the engine, docs/vllm-serving.md). Tested for every
        registered method (``tests/methods/test_servable.py``)."""
        return False

    def count(self, num_frames: int, tokens_per_frame: int, budget: float,
              grid: tuple[int, int] | None = None) -> int:
        """The number of tokens ``prune`` returns for every ``x [num_frames, tokens_per_frame, D]`` at ``budget``
        (``grid``: the pooled ``(H, W)``), for a :attr:`servable` method; others raise, their count depends on the
        video."""
        raise NotImplementedError(f"method {self.name!r}: its kept count depends on the video, so it is not servable")

    def check_feasible(self, budget: float, num_frames: int) -> None:
        """Raise ``ValueError`` naming the values if this method cannot run at ``budget`` with at most
        ``num_frames`` sampled frames per video. Called when a run is composed, before any model loads; the default
        accepts everything."""



def identity_selection(x: Tensor) -> Selection:
    """All tokens, unchanged, in raster order: ``x [N, L, D]`` -> ``Selection`` with ``M = N * L``."""
    n, l, d = x.shape
    return Selection(
        tokens=x.reshape(n * l, d),
        indices=torch.arange(n * l, device=x.device),
        stats={"tokens_in": n * l, "tokens_out": n * l},
    )


#: ``count_rule`` values of the methods whose authors' count depends on the video (Tango, HoliTom, FlashVID)
COUNT_RULES = ("authors", "exact")
EXACT_REGIME = "exact_count"


def exact_count(num_frames: int, tokens_per_frame: int, fraction: float) -> int:
    """``round(fraction * N * L)`` (Python's half-to-even), clamped to ``[1, N * L]``: the budget's own definition."""
    total = num_frames * tokens_per_frame
    return min(total, max(1, round(fraction * total)))


def reconcile(indices: Tensor, score: Tensor, target: int) -> tuple[Tensor, Tensor]:
    """The reconcile step of the ``count_rule="exact"`` variants: which outputs to keep and which source tokens to
    add so that exactly ``target`` tokens remain.

    Args:
        indices: ``[M]`` long, the outputs' representative flat indices (duplicates allowed).
        score: ``[N * L]`` the method's own saliency of every source token.
        target: the exact count.
    Returns:
        ``keep [M]`` bool (above ``target``: the ``M - target`` outputs whose representative scores lowest are
        dropped, the earlier output first on ties) and ``added [K]`` long, ascending (below ``target``: the
        ``target - M`` source tokens of highest score that represent no output, the lower index first on ties; they
        enter with their own features).
    """
    m = indices.numel()
    keep = torch.ones(m, dtype=torch.bool, device=indices.device)
    added = indices.new_zeros(0)
    if target < m:
        keep[torch.argsort(score[indices], stable=True)[: m - target]] = False
    elif target > m:
        free = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        free[indices] = False
        pool = free.nonzero().flatten()
        added = pool[torch.argsort(score[pool], descending=True, stable=True)[: target - m]].sort().values
    return keep, added


class ExactCount:
    """Servable variant of a method whose authors' kept count depends on the video: with ``count_rule="exact"`` the
    method's own output is reconciled to :func:`exact_count` of its pre-LLM fraction by :func:`reconcile` (as vLLM's
    VidCom² port reconciles its count), recorded as regime ``exact_count``. ``tokens_out`` counts after that step;
    the method's other stats (e.g. Tango's ``static_kept``) describe its own pipeline's output before it, and
    ``reconciled`` is the difference. Mixed into a :class:`PruningMethod` dataclass that declares
    ``count_rule: str = "authors"`` and implements ``pre_llm_fraction(budget)``."""

    nonstandard_regimes: ClassVar[dict[str, str]] = {
        EXACT_REGIME: ("count_rule=exact: the method's output reconciled to round(budget * N * L) tokens by its own "
                       "saliency (lowest-scoring outputs dropped, highest-scoring unrepresented tokens added), the "
                       "servable variant, not the authors' algorithm")}

    def check_count_rule(self) -> None:
        if self.count_rule not in COUNT_RULES:
            raise ValueError(f"{self.name}: count_rule={self.count_rule!r} is invalid; valid: {list(COUNT_RULES)}")

    @property
    def servable(self) -> bool:
        """With ``count_rule="exact"`` and no stage inside the LLM."""
        return self.count_rule == "exact" and self.stage == "pre_llm"

    def count(self, num_frames, tokens_per_frame, budget, grid=None) -> int:
        if not self.servable:
            return PruningMethod.count(self, num_frames, tokens_per_frame, budget, grid)
        return exact_count(num_frames, tokens_per_frame, self.pre_llm_fraction(check_budget(budget)))

    def exact_plan(self, indices: Tensor, score: Tensor, budget: float, stats: dict) -> tuple[Tensor, Tensor]:
        """``(keep [M], added [K])`` (:func:`reconcile`) bringing the outputs ``indices [M]`` to the exact count for
        ``score [N, L]`` at ``budget``; records the regime, the target and the signed number of tokens moved in
        ``stats``."""
        n, l = score.shape
        target = exact_count(n, l, self.pre_llm_fraction(budget))
        keep, added = reconcile(indices, score.reshape(n * l).float(), target)
        stats.update(regime=EXACT_REGIME, count_rule=self.count_rule, count_target=target,
                     reconciled=target - int(indices.numel()),
                     budget_rule="round(budget*N*L), reconciled by saliency (count_rule=exact)")
        return keep, added

    def exact_sorted(self, sel: Selection, x: Tensor, score: Tensor, budget: float) -> Selection:
        """``sel`` (outputs in ascending flat-index order) at the exact count: added tokens enter with their own
        features of ``x [N, L, D]`` at their index (a stable sort keeps the order of equal indices)."""
        keep, added = self.exact_plan(sel.indices, score, budget, sel.stats)
        indices = torch.cat([sel.indices[keep], added])
        order = indices.argsort(stable=True)
        tokens = torch.cat([sel.tokens[keep], x.reshape(-1, x.shape[-1])[added].to(sel.tokens.dtype)])
        sel.stats["tokens_out"] = int(indices.numel())
        return Selection(tokens=tokens[order], indices=indices[order], stats=sel.stats)
