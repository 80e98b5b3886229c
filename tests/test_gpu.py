"""GPU tier (`gpu` marker, skipped without CUDA): the same exactness and end-to-end checks on the device."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.gpu


def test_tiny_full_tokens_are_bit_exact_on_cuda(tiny_llava_dir):
    from tango.methods import build_method
    from tango.models.base import load_adapter
    from tango.video import Clip

    adapter = load_adapter("llava_ov", pretrained=str(tiny_llava_dir), device=torch.device("cuda"), dtype="float32")
    frames = np.random.RandomState(0).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    clip = Clip(frames, np.arange(16), np.arange(16) / 8.0, 8.0, 16)
    inputs = adapter.prepare(clip, "What colour?")
    gen = adapter.generate(inputs, clip, build_method("none"), 1.0, max_new_tokens=4)
    with torch.inference_mode():
        ref = adapter.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    text = adapter.processor.batch_decode(ref[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert gen.text == text.strip() and gen.stats["ttft_ms"] > 0


def test_run_py_on_cuda_records_the_gpu(run_env):
    proc = run_cli(["device=cuda", "method=none", "task.synthetic.num_videos=4"], run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = Path(run_env["TANGO_RESULTS"]).glob("runs/*/record.json")
    record = json.loads(rec.read_text())
    assert record["device_name"] == torch.cuda.get_device_name() and record["peak_mem_mb"] > 0
