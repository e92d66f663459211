"""Merges on a CUDA device agree with the CPU's (skipped where there is none).

Random masks (DARE, DELLA) come from a counter-based hash, so both devices keep the same
entries; float work may round differently (a GPU fuses multiply-adds), so outputs agree to a
rounding step of bfloat16 nearly everywhere, and a sparsifying cut may differ only at entries
whose magnitudes tie to within that rounding. Arcee Fusion's choice rests on float32 divergences
of nearly equal rows, which the two devices round apart (see its module): it may differ more.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from bench.run import recipes  # noqa: E402
from tests.models import load_state  # noqa: E402

METHODS = list(recipes(*["m"] * 3, 4))


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory):
    from bench.models import make_models

    return make_models(tmp_path_factory.mktemp("cuda-models"), "tiny")


def test_random_draws_are_the_same_bits_on_cuda():
    from hubbot.methods._sparsify import uniform

    for seed, row, shape in [(7, 0, (64, 1000)), (1, 5, (3, 70_000)), (2**31 + 5, 0, (17,))]:
        assert torch.equal(uniform(seed, row, shape, torch.device("cpu")),
                           uniform(seed, row, shape, torch.device("cuda")).cpu())


@pytest.mark.parametrize("chunk", [None, 8192], ids=["whole", "blocks"])
@pytest.mark.parametrize("method", METHODS)
def test_cuda_merge_matches_the_cpu(method, chunk, bench_models, tmp_path):
    from hubbot.merge import engine
    from hubbot.merge.plan import build
    from hubbot.recipe.merge import parse

    recipe = recipes(*bench_models, 4)[method]
    outs = {}
    for device in ("cpu", "cuda"):
        result = engine.run(build(parse(recipe)), tmp_path / device, device=device, chunk_bytes=chunk)
        assert result.device.startswith(device)
        outs[device] = load_state(tmp_path / device)
    cpu, gpu = outs["cpu"], outs["cuda"]
    assert cpu.keys() == gpu.keys()
    off = total = 0
    for name, a in cpu.items():
        b = gpu[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        a, b = a.float(), b.float()
        off += int(((a - b).abs() > a.abs() * 2**-7 + 1e-6).sum())  # more than a bfloat16 step apart
        total += a.numel()
    share = 1e-2 if method == "arcee_fusion" else 1e-3
    assert off <= total * share, f"{method}: {off} of {total} entries differ by more than a bfloat16 step"
