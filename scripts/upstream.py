"""The authors' implementations, loaded unmodified from a local clone (or bare mirror) at their pinned commits, as
callables on the harness's inputs: for the parity fixture generators (``tests/fixtures/*/make_reference.py``) and for
``scripts/bench_methods.py --reference``. Nothing of the upstream code is stored in this repository.

    run = load("holitom", "/path/to/HoliTom")   # run(x [N, L, D], attn [N, L], budget, tau=..., seed=...) -> dict
    run = load("fastvid", "/path/to/FastVID")   # run(x, attn, global [N, Dg], budget, c=..., tau=..., seed=...)
    run = load("dycoke", "/path/to/DyCoke")     # run(x [N, L, D], k) -> DyCoke's TTM output [M, D]
    run = load("holitom_inner", "/path/to/HoliTom")   # run(hidden [1, S, D], row [H, S], start, length, r)
    run = load("tango", "/path/to/Tango")       # run(x [N, L, D], attn, timestamps, budget, tau=..., sinks=...)
    run = load("evs", "/path/to/vllm")          # run(x [N, L, D], q) -> vLLM's EVS retention mask as indices
    run = load("vidcom2", "/path/to/VidCom2")   # run(x [N, L, D], r) -> the authors' kept indices and rows
    run = load("vidcom2_vllm", "/path/to/vllm") # run(x [N, L, D], q) -> vLLM's VidCom2 retention mask as indices
    run = load("flashvid", "/path/to/FlashVID") # run(x, attn, budget, seed=..., **FlashVidConfig fields)

Each callable returns ``{"tokens": [M, D], "indices": [M] flat frame * L + l}`` in the method's LLM order (plus
HoliTom's ``windows``, ``total_reduced`` and ``ratio``). The glue each needs (HoliTom's driver lines of
``prepare_inputs_labels_for_multimodal`` and ``holitom``'s ``one_token`` branch, which are inline upstream; the
prompt around FastVID's video span) is written here, calling the upstream functions / block as they are.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import torch
import torch.nn.functional as F

COMMITS = {"holitom": "e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0",
           "holitom_inner": "e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0",
           "fastvid": "a40a109cb8df20e8c2c17c6850f8269717369990",
           "dycoke": "dd7463498203479d0ff6f2d29c4e72928c0af244", "tango": "cc815b6e6762f6cf54ae20fafefd4d5bc02f2aef",
           "evs": "d750efb17f402de810f88283c64f4ec0f7cb6c93",
           "vidcom2": "944a17d14f4848ad080a65eab2b0711a760fa154",
           "vidcom2_vllm": "0f17ee061e413bf8ab7927f926f69cdff24dc63e",
           "flashvid": "1d37422c5afcaa15ee46b5355f5ba798fa93290a",
           "fastvid_video": "a40a109cb8df20e8c2c17c6850f8269717369990",
           "fastvid_qwen": "a40a109cb8df20e8c2c17c6850f8269717369990"}
FILES = {"holitom": "holitom/llava_arch.py", "holitom_inner": "holitom/modeling_qwen2.py",
         "fastvid": "fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py",
         "dycoke": "llava/model/llava_arch.py",
         "tango": "tango/pruner.py", "evs": "vllm/multimodal/video_prune/evs.py",
         "vidcom2": "token_compressor/vidcom2/vidcom2.py", "vidcom2_vllm": "vllm/multimodal/video_prune/vidcom2.py",
         "flashvid": "flashvid/utils.py",
         "fastvid_video": "fastvid_llavavideo/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py",
         "fastvid_qwen": "fastvid_qwen25vl/lmms-eval/lmms_eval/models/qwenvlutils/modeling_qwen2_5_vl.py"}
FLASHVID_MODULES = ("flashvid/configuration_flashvid.py", "flashvid/token_selection.py", "flashvid/utils.py")
TANGO_MODULES = ("tango/utils.py", "tango/prune_config.py", "tango/pruner.py", "llava/model/st_rope.py")


def source(method: str, repo: str | Path, file: str | None = None) -> str:
    """``file`` (default ``FILES[method]``) at ``COMMITS[method]`` from a clone's work tree or, for a bare mirror,
    through git."""
    repo, file = Path(repo), file or FILES[method]
    path = repo / file
    if path.exists():
        return path.read_text()
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{COMMITS[method]}:{file}"],
                          capture_output=True, text=True, check=True).stdout


def _holitom_functions(repo):
    stubs = {"llava": {}, "llava.constants": dict(IGNORE_INDEX=-100, IMAGE_TOKEN_INDEX=-200,
                                                   DEFAULT_IMAGE_PATCH_TOKEN="", DEFAULT_IM_START_TOKEN="",
                                                   DEFAULT_IM_END_TOKEN=""),
             "llava.mm_utils": dict(get_anyres_image_grid_shape=None),
             "llava.utils": dict(rank0_print=lambda *a, **k: None, rank_print=lambda *a, **k: None)}
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules.setdefault(name, mod)
    ns: dict = {}
    exec(compile(source("holitom", repo), FILES["holitom"], "exec"), ns)
    cls = next(v for v in ns.values() if isinstance(v, type) and hasattr(v, "select_static_windows"))
    names = ["cluster_dpc_knn", "select_static_windows", "merge_tokens_by_clustering",
             "merge_tokens_by_attention_density", "merge_tokens_by_density", "get_static_dynamic_features"]
    return type("HoliTomFunctions", (), {n: getattr(cls, n) for n in names})()


def load_holitom(repo):
    h = _holitom_functions(repo)

    def run(x, attn, budget: float, tau: float = 0.8, seed: int = 0, beta: float = 0.6, k: int = 7,
            max_window: int = 1024) -> dict:
        n, l, _ = x.shape
        torch.manual_seed(seed)  # the DPC-KNN noise comes from the global RNG
        xn = F.normalize(x, p=2, dim=-1)
        sim = F.cosine_similarity(xn[:-1], xn[1:], dim=-1)
        windows, total_reduced = h.select_static_windows(sim, n, tau, max_window)
        total = n * l
        ratio = min(budget / ((total - total_reduced) / total), 1)
        static_feat, dynamic_feat, _, dynamic_attn, static_pos, dynamic_pos = h.get_static_dynamic_features(
            x, attn, windows, sim, tau)
        tokens, indices = [], []
        for i, (s, e) in enumerate(windows):
            dyn, dyn_pos = h.merge_tokens_by_attention_density(dynamic_feat[i], dynamic_attn[i], dynamic_pos[i],
                                                               ratio, 0.0, beta, k)
            if e > s:  # holitom(): the window's static tokens first, then its dynamic ones (one_token)
                st, st_pos = h.merge_tokens_by_density(static_feat[i].unsqueeze(0), static_pos[i], ratio, beta, k)
                tokens.append(st.flatten(0, 1))
                indices += [s * l + int(p) for p in st_pos.flatten().tolist()]
            tokens.append(dyn.flatten(0, 1))
            indices += [(s + f) * l + int(p) for f in range(dyn_pos.shape[0]) for p in dyn_pos[f].tolist()]
        return {"tokens": torch.cat(tokens), "indices": torch.tensor(indices), "windows": windows,
                "total_reduced": float(total_reduced), "ratio": ratio}

    return run


def _video_part(keep, out, p0: int, n_video: int, s: int) -> dict:
    """The kept video tokens of a FastVID block's output sequence ``out [S', D]`` (positions ``keep [S']`` in an
    ``s``-token prompt whose video span is ``[p0, p0 + n_video)``), after checking that the text is untouched."""
    vis = (keep >= p0) & (keep < p0 + n_video)
    if keep[~vis].tolist() != [*range(p0), *range(p0 + n_video, s)]:
        raise AssertionError("FastVID changed the text around the video")
    return {"tokens": out[vis], "indices": keep[vis] - p0}


def load_fastvid(repo):
    lines = source("fastvid", repo).splitlines()
    start = next(i for i, ln in enumerate(lines) if "FastVID ####" in ln)
    end = next(i for i in range(start + 1, len(lines)) if set(lines[i].strip()) == {"#"} and len(lines[i].strip()) > 40)
    code = compile(textwrap.dedent("\n".join(lines[start + 1:end])), FILES["fastvid"], "exec")

    def run(x, attn, glob, budget: float, c: int = 8, tau: float = 0.9, seed: int = 0, prefix=None, suffix=None) -> dict:
        n, l, d = x.shape
        prefix = x.new_zeros(1, 0, d) if prefix is None else prefix
        suffix = x.new_zeros(1, 0, d) if suffix is None else suffix
        p0 = prefix.shape[1]
        hidden = torch.cat([prefix, x.reshape(1, n * l, d), suffix], dim=1)
        s = hidden.shape[1]
        me = types.SimpleNamespace(video_start_idx=p0, video_token_len=n * l, frame_num=n,
                                   frame_attn_weights=attn.flatten(), frame_global_features=glob, fastvid_DySeg_c=c,
                                   fastvid_DySeg_tau=tau, fastvid_STPrune_d=0.4, fastvid_DTM_p=4,
                                   fastvid_DTM_beta=0.6, fastvid_retention_ratio=budget)
        ns = {"self": me, "hidden_states": hidden, "seq_length": s, "causal_mask": None, "torch": torch, "F": F,
              "position_embeddings": (hidden.new_zeros(1, s, 1), hidden.new_zeros(1, s, 1))}
        torch.manual_seed(seed)  # the density noise comes from the global RNG
        exec(code, ns)
        return _video_part(ns["keep_indexs"], ns["hidden_states"][0], p0, n * l, s)

    return run


def load_fastvid_video(repo):
    """The LLaVA-Video fork's FastVID block of ``Qwen2Model.forward`` (from ``if seq_length > 1: ### FastVID`` to the
    decoder loop), executed as is on a LLaVA-Video grid span (64 frames x 13 rows of 13 tokens + a newline, as the
    fork hard-codes): ``run(x [64, 169, D], attn [64, 169], glob [64, Dg], budget, seed=0)`` ->
    ``{"tokens": [M, D], "indices": [M]}`` for the kept video tokens (flat ``frame * 169 + l``), newlines left out."""
    lines = source("fastvid_video", repo).splitlines()
    start = next(i for i, ln in enumerate(lines) if "if seq_length > 1: ### FastVID" in ln)
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "for decoder_layer in self.layers:")
    code = compile(textwrap.dedent("\n".join(lines[start + 1:end])), FILES["fastvid_video"], "exec")

    def run(x, attn, glob, budget: float, c: int = 8, tau: float = 0.9, seed: int = 0) -> dict:
        n, l, d = x.shape
        if (n, l) != (64, 169):
            raise ValueError("the LLaVA-Video fork hard-codes 64 frames of 13 x 13 tokens")
        newline = torch.full((n, 13, 1, d), 7.0)  # a distinct row-end token
        span = torch.cat([x.reshape(n, 13, 13, d), newline], dim=2).reshape(1, n * 182, d)
        p0 = 2
        hidden = torch.cat([torch.zeros(1, p0, d), span, torch.zeros(1, 3, d)], dim=1)
        s = hidden.shape[1]
        me = types.SimpleNamespace(video_start_idx=p0, video_token_len=n * 182, frame_num=n,
                                   frame_attn_weights=attn.flatten(), frame_global_features=glob, fastvid_DySeg_c=c,
                                   fastvid_DySeg_tau=tau, fastvid_STPrune_d=0.4, fastvid_DTM_p=4,
                                   fastvid_DTM_beta=0.6, fastvid_retention_ratio=budget)
        ns = {"self": me, "hidden_states": hidden, "seq_length": s, "causal_mask": None, "torch": torch, "F": F,
              "position_embeddings": (hidden.new_zeros(1, s, 1), hidden.new_zeros(1, s, 1))}
        torch.manual_seed(seed)  # the density noise comes from the global RNG
        exec(code, ns)
        keep, out = ns["keep_indexs"], ns["hidden_states"][0]
        rel = keep - p0
        video = (rel >= 0) & (rel < n * 182) & ((rel + 1) % 14 != 0)  # video tokens, not newlines or text
        pure = (rel[video] // 14) * 13 + rel[video] % 14
        return {"tokens": out[video], "indices": pure}

    return run


def load_fastvid_qwen(repo):
    """The Qwen2.5-VL fork's FastVID block of ``Qwen2_5_VLForConditionalGeneration.forward`` (from ``if seq_length >
    1:`` after the position ids to the language-model call), executed as is: ``run(x [T, L, D], attn [T, L],
    glob [T, Dg], budget, grid=(h, w), tau=0.84, ignore=0.95, seed=0)`` -> ``{"tokens", "indices"}`` (kept flat
    ``t * L + l``), ``L = h * w`` merged tokens per temporal patch."""
    lines = source("fastvid_qwen", repo).splitlines()
    start = next(i for i in range(1, len(lines)) if lines[i].strip() == "if seq_length > 1:"
                 and "seq_length = inputs_embeds.shape[1]" in lines[i - 1])
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "outputs = self.model(")
    code = compile(textwrap.dedent("\n".join(lines[start + 1:end])), FILES["fastvid_qwen"], "exec")

    def run(x, attn, glob, budget: float, grid: tuple[int, int], c: int = 8, tau: float = 0.84, ignore: float = 0.95,
            seed: int = 0) -> dict:
        t, l, d = x.shape
        p0 = 3
        embeds = torch.cat([torch.zeros(1, p0, d), x.reshape(1, t * l, d), torch.zeros(1, 2, d)], dim=1)
        s = embeds.shape[1]
        me = types.SimpleNamespace(fastvid_retention_ratio=budget, fastvid_DySeg_c=c, fastvid_DySeg_tau=tau,
                                   fastvid_DySeg_ignore=ignore, fastvid_STPrune_d=0.4, fastvid_DTM_p=4,
                                   fastvid_DTM_beta=0.6)
        ns = {"self": me, "inputs_embeds": embeds, "seq_length": s, "prompt_start_len": p0, "video_len": t * l,
              "video_grid_thw": torch.tensor([[t, 2 * grid[0], 2 * grid[1]]]), "frame_attn_weights": attn,
              "frame_global_features": glob, "position_ids": torch.arange(s).expand(3, 1, s),
              "attention_mask": torch.ones(1, s, dtype=torch.long), "cache_position": torch.arange(s), "torch": torch}
        torch.manual_seed(seed)  # the density noise comes from the global RNG
        exec(code, ns)
        return _video_part(ns["keep_indexs"], ns["inputs_embeds"][0], p0, t * l, s)

    return run


def load_holitom_inner(repo):
    """The inner-LLM merge of ``Qwen2Model_holitom.forward`` (from the head-mean of layer K-1's attention to the end
    of the merge loop), cut out and executed as is: ``run(hidden [1, S, D], row [H, S], start, length, r)`` ->
    ``{"keep": [K] ascending span-local indices, "tokens": [K, D]}`` (the kept rows after the in-place merge)."""
    lines = source("holitom_inner", repo).splitlines()
    start = next(i for i, ln in enumerate(lines) if "last_layer_attention_avg = torch.mean(last_layer_attention" in ln)
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "# keep index")
    code = compile(textwrap.dedent("\n".join(lines[start:end])), FILES["holitom_inner"], "exec")

    def run(hidden, row, start: int, length: int, r: float) -> dict:
        s = hidden.shape[1]
        attn = torch.zeros(1, row.shape[0], s, s, dtype=row.dtype)
        attn[0, :, -1] = row  # only the last query row is read
        ns = {"last_layer_attention": attn, "HOLITOM_image_token_start_index": start,
              "HOLITOM_image_token_length": length, "HOLITOM_r": r, "hidden_states": hidden.clone(), "torch": torch,
              "print": lambda *a, **k: None}
        exec(code, ns)
        keep = ns["top_attention_rank_index"].sort().values
        return {"keep": keep - start, "tokens": ns["hidden_states"][0, keep]}

    return run


def load_dycoke(repo):
    """``dycole_ttm`` (sic) alone, cut out of ``llava/model/llava_arch.py`` (the module's other imports need the whole
    LLaVA-NeXT fork): ``run(x [N, L, D], k) -> [M, D]``, the reference's output rows in its order."""
    import ast

    src = source("dycoke", repo)
    fn = next(node for node in ast.parse(src).body if isinstance(node, ast.FunctionDef) and node.name == "dycole_ttm")
    ns: dict = {"torch": torch}
    exec(compile(ast.get_source_segment(src, fn), FILES["dycoke"], "exec"), ns)

    def run(x, k: float):
        n, l, d = x.shape
        return ns["dycole_ttm"](x.reshape(n * l, d), num_tokens_per_frame=l, merging_ratio=k)

    return run


def _exec_package(package: str, method: str, repo, files) -> dict:
    """Execute ``files`` (at ``COMMITS[method]``) as the modules of a fresh package ``package``, so their relative
    imports resolve among themselves; returns ``{file stem: module}``."""
    pkg = types.ModuleType(package)
    pkg.__path__ = []
    sys.modules[package] = pkg
    mods = {}
    for file in files:
        mod = types.ModuleType(f"{package}.{Path(file).stem}")
        mod.__package__ = package
        sys.modules[mod.__name__] = mod
        exec(compile(source(method, repo, file), file, "exec"), mod.__dict__)
        mods[Path(file).stem] = mod
    return mods


def load_tango(repo):
    """The authors' ``tango_pruner`` with its ``utils`` / ``prune_config`` and ``SpatioTemporalRoPE``, executed as a
    package named ``tango_upstream`` (the harness's own package is ``tango``), called as their ``llava_arch.py``
    does: ``run(x [N, L, D], attn [N, L], timestamps [N], budget, tau, sinks)`` -> ``{"indices": sorted kept}``.
    ST-RoPE uses the 7B sections [1196, 1194, 1194], so ``D`` must be 3584."""
    mods = _exec_package("tango_upstream", "tango", repo, TANGO_MODULES)

    def run(x, attn, timestamps, budget: float, tau: float, sinks=(), context_ratio: float = 0.4, alpha: float = 1.5,
            base_time: float = 10000.0, base_space: float = 1000.0, seed: int = 0) -> dict:
        torch.manual_seed(seed)  # its DPC-KNN noise comes from the global RNG
        cfg = mods["prune_config"].PRUNE_CONFIG
        cfg.update(special_attn_token_list=list(sinks), alpha=alpha)
        rope = mods["st_rope"].SpatioTemporalRoPE(types.SimpleNamespace(base_time=base_time, base_space=base_space))
        roped = rope(F.normalize(x.float(), dim=-1), t_ids=timestamps.cpu())
        _, kept = mods["pruner"].tango_pruner(image_features=x, roped_image_features=roped, sim_metric=x,
                                              salient_score=attn.clone(), segment_type="holitom",
                                              retain_ratio=budget, context_ratio=context_ratio, tau=tau, beta=0.6,
                                              k_neighbors=7)
        return {"indices": kept}

    return run


def load_evs(repo):
    """vLLM's ``compute_retention_mask`` (pure torch), from a clone of vllm-project/vllm or from the installed
    ``vllm`` package's directory's parent (``vllm/multimodal/video_prune/evs.py``): ``run(x [N, L, D], q)`` ->
    ``{"indices": kept flat indices, ascending}`` with ``(T, H, W) = (N, 1, L)`` and merge size 1."""
    ns: dict = {}
    exec(compile(source("evs", repo), FILES["evs"], "exec"), ns)

    def run(x, q: float) -> dict:
        n, l, d = x.shape
        mask = ns["compute_retention_mask"](x.reshape(n * l, d), (n, 1, l), 1, q)
        return {"indices": mask.nonzero().flatten()}

    return run


def load_vidcom2(repo):
    """The authors' VidCom² steps, called in ``vidcom2_compression``'s order with the Qwen ("linear", dynamic L)
    spec: ``run(x [N, L, D], r)`` -> ``{"indices": kept flat indices, ascending, "tokens": its output rows}``
    (checked against ``vidcom2_compression`` itself); ``check=False`` runs only ``vidcom2_compression``."""
    ns: dict = {}
    exec(compile(source("vidcom2", repo), FILES["vidcom2"], "exec"), ns)

    def run(x, r: float, check: bool = True) -> dict:
        n, l, d = x.shape
        flat = x.reshape(n * l, d)
        if not check:  # the entry point alone (timing): its output rows
            return {"tokens": ns["vidcom2_compression"](flat, model="qwen2_5_vl", base_scale=r, frame_token_len=l)}
        v, f = ns["compute_gaussian_scores"](ns["select_low_var_channels"](flat), l)
        per_frame = ns["select_outlier_indices"](v + f, ns["compute_scales"](-v.mean(dim=-1), r), l)
        idx = ns["_map_linear_offset"](per_frame, l)
        out = ns["vidcom2_compression"](flat, model="qwen2_5_vl", base_scale=r, frame_token_len=l)
        assert torch.equal(out, flat[idx])  # the steps above are vidcom2_compression's
        return {"indices": idx, "tokens": out}

    return run


def load_vidcom2_vllm(repo):
    """vLLM's VidCom² ``compute_retention_mask``: ``run(x [N, L, D], q)`` -> ``{"indices": kept, ascending}``."""
    ns: dict = {}
    exec(compile(source("vidcom2_vllm", repo), FILES["vidcom2_vllm"], "exec"), ns)

    def run(x, q: float) -> dict:
        n, l, d = x.shape
        return {"indices": ns["compute_retention_mask"](x.reshape(n * l, d), (n, 1, l), 1, q).nonzero().flatten()}

    return run


def load_flashvid(repo):
    """FlashVID's ``flashvid_compression`` with its ``token_selection`` and ``configuration_flashvid``, executed as a
    package ``flashvid_upstream``: ``run(x [N, L, D], attn [N, L], budget, seed=0, **config)`` ->
    ``{"tokens": [M, D], "indices": [M]}`` (its output, sorted by flat index). ``torch.manual_seed(seed)`` first (its
    DPC noise comes from the global RNG); ``x`` is cloned (upstream writes into it)."""
    mods = _exec_package("flashvid_upstream", "flashvid", repo, FLASHVID_MODULES)

    def run(x, attn, budget: float, seed: int = 0, **config) -> dict:
        torch.manual_seed(seed)
        cfg = mods["configuration_flashvid"].FlashVidConfig(retention_ratio=budget, **config)
        tokens, idx = mods["utils"].flashvid_compression(x.clone(), attn, cfg)
        return {"tokens": tokens, "indices": idx}

    return run


LOADERS = {"holitom": load_holitom, "tango": load_tango, "holitom_inner": load_holitom_inner, "fastvid": load_fastvid,
           "dycoke": load_dycoke, "evs": load_evs,
           "vidcom2": load_vidcom2, "vidcom2_vllm": load_vidcom2_vllm, "flashvid": load_flashvid,
           "fastvid_video": load_fastvid_video, "fastvid_qwen": load_fastvid_qwen}


def rounded(t: torch.Tensor) -> list:
    """Rows of a fixture's tokens to 8 significant digits (float32 carries about 7; tests compare at rtol 1e-5)."""
    return [[float(f"{v:.8g}") for v in row] for row in t.tolist()]


def load(method: str, repo: str | Path):
    """The authors' implementation of ``method`` from the clone at ``repo``."""
    if method not in LOADERS:
        raise ValueError(f"no upstream loader for {method!r}; available: {sorted(LOADERS)}")
    return LOADERS[method](repo)
