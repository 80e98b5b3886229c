"""LLaVA-Video adapter: tower -> projector -> 2x2 average pooling, newline after each (surviving) row."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tango.methods import build_method
from tango.methods.base import Selection
from tango.models.base import load_adapter
from tango.video import Clip

from models.test_llava_ov import KeepFirstPerFrame

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def adapters(tiny_llava_dir):
    kw = dict(pretrained=str(tiny_llava_dir), device=torch.device("cpu"), dtype="float32")
    return load_adapter("llava_video", **kw), load_adapter("llava_ov", **kw)


@pytest.fixture(scope="module")
def clip():
    frames = np.random.RandomState(2).randint(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    return Clip(frames, np.arange(16), np.arange(16) / 8.0, 8.0, 16)


def test_average_pooling_path_matches_the_model_own_features(adapters, clip):
    """On an even 8x8 patch grid a 2x2 average equals transformers' bilinear halving, so the hand-built path
    (tower -> projector -> avg pool) must reproduce get_video_features."""
    video, ov = adapters
    pv = ov.prepare(clip, "q")["pixel_values_videos"]
    with torch.inference_mode():
        x, newline = video._encode(pv)
        x_ov, newline_ov = ov._encode(pv)
    assert video.grid == (4, 4) and x.shape == (16, 16, 64)
    torch.testing.assert_close(x, x_ov, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(newline, newline_ov)


def _reference_layout(idx, tokens, newline, n_frames, h, w, all_rows):
    """Python-loop reference: walk the rows, emit each row's kept tokens then a newline."""
    out = []
    for f in range(n_frames):
        for r in range(h):
            row = [tokens[i] for i in range(len(idx)) if idx[i] // (h * w) == f and idx[i] % (h * w) // w == r]
            out += row
            if row or all_rows:
                out.append(newline[0])
    return torch.stack(out)


@pytest.mark.parametrize("all_rows", [False, True])
def test_newline_layout(adapters, all_rows):
    video, _ = adapters
    idx = torch.tensor([0, 1, 5, 6, 7, 15, 16, 30, 47])  # 3 frames of 4x4; rows with and without kept tokens
    tokens = torch.arange(len(idx), dtype=torch.float32)[:, None].expand(-1, 3) + 1
    newline = torch.full((1, 3), -1.0)

    @dataclass
    class M(KeepFirstPerFrame):
        grid_newlines: str = "all_rows" if all_rows else "surviving_rows"

    out, n, mask = video._assemble(Selection(tokens, idx), newline, M(), 3)
    expected = _reference_layout(idx.tolist(), tokens, newline, 3, 4, 4, all_rows)
    assert torch.equal(out, expected) and n == len(expected)
    assert torch.equal(mask, expected[:, 0] != -1)
    assert len(expected) == (9 + 12 if all_rows else 9 + 6)  # 6 distinct rows hold kept tokens


def test_out_of_order_tokens_are_laid_out_by_position(adapters):
    video, _ = adapters
    tokens = torch.tensor([[5.0], [1.0]]).expand(-1, 3)
    out, _, _ = video._assemble(Selection(tokens, torch.tensor([5, 1])), torch.full((1, 3), -1.0), KeepFirstPerFrame(),
                                1)
    assert out[:, 0].tolist() == [1.0, -1.0, 5.0, -1.0]  # row 0 (token 1), newline, row 1 (token 5), newline


@pytest.mark.parametrize("budget,rows_kept", [(1.0, 4), (0.25, 1)])
def test_prompt_has_the_kept_tokens_and_one_newline_per_kept_row(adapters, clip, budget, rows_kept):
    video, _ = adapters
    inputs = video.prepare(clip, "What colour?")
    method = build_method("none") if budget == 1.0 else KeepFirstPerFrame()
    gen = video.generate(inputs, clip, method, budget, max_new_tokens=2)
    text_tokens = inputs["input_ids"].shape[1] - (16 * 16 + 1)  # the OV processor's placeholder count
    assert gen.stats["tokens_out"] == round(16 * 16 * budget)
    assert gen.stats["prompt_tokens"] == text_tokens + gen.stats["tokens_out"] + 16 * rows_kept
