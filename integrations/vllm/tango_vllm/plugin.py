"""``vllm.general_plugins`` entry point: vLLM calls :func:`register` once in every process it starts."""

from __future__ import annotations

ARCHITECTURES = {
    "TangoQwen2_5_VLForConditionalGeneration": "tango_vllm.qwen2_5_vl:TangoQwen2_5_VLForConditionalGeneration",
    "TangoQwen3VLForConditionalGeneration": "tango_vllm.qwen3_vl:TangoQwen3VLForConditionalGeneration",
}
#: vLLM releases whose CPU runner never sets ``is_multimodal_pruning_enabled`` (checked in their source)
CPU_RUNNER_BUG = ("0.32.0", "0.33.0")


def register() -> None:
    from vllm import ModelRegistry

    for arch, path in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, path)
    _fix_cpu_runner_pruning_flag()


def _fix_cpu_runner_pruning_flag() -> None:
    """Upstream bug (vLLM 0.32.0 / 0.33.0): ``GPUModelRunner.load_model`` sets ``is_multimodal_pruning_enabled`` but
    ``CPUModelRunner.load_model`` overrides it without doing so, so on CPU the pruned embeddings keep their 4 position
    channels and EVS (or any pruning model) crashes with a shape mismatch; vllm-ascend fixed the same bug for its NPU
    runner (vllm-project/vllm-ascend#11067). Set the flag after the CPU runner loads its model, as the GPU runner
    does; version-gated so a release that changes the runner is looked at again."""
    import vllm

    if vllm.__version__.split("+")[0] not in CPU_RUNNER_BUG:
        return
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a CUDA build without the CPU runner
        return
    if getattr(CPUModelRunner.load_model, "_tango_pruning_flag", False):
        return
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    load_model = CPUModelRunner.load_model

    def load_model_and_set_pruning_flag(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        mm_config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = bool(
            supports_multimodal_pruning(self.get_model()) and mm_config is not None
            and mm_config.is_multimodal_pruning_enabled())

    load_model_and_set_pruning_flag._tango_pruning_flag = True
    CPUModelRunner.load_model = load_model_and_set_pruning_flag
