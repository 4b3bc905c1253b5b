from __future__ import annotations

import torch

from services.trainer.optim import BF16AdamW, stochastic_round_bf16


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2**-10, dtype=torch.float32)  # between two bf16 values
    r = stochastic_round_bf16(x, g).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(r.mean().item() - x[0].item()) < 2e-5  # plain rounding would give exactly 1.0


def test_fp32_parameters_get_exact_adamw() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(16, 8)
    b = torch.nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    ours = BF16AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, chunk_elements=7)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(4, 16)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_small_updates_survive_on_bf16_weights() -> None:
    """2e-5-sized steps on weights near 1: round-to-nearest bf16 loses them all."""
    torch.manual_seed(0)
    w_sr = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    w_rn = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = BF16AdamW([w_sr], lr=2e-5)
    steps = 500
    for _ in range(steps):
        w_sr.grad = torch.ones_like(w_sr)  # Adam's update is ~lr per step
        opt.step()
        with torch.no_grad():
            w_rn.copy_((w_rn.float() - 2e-5).to(torch.bfloat16))
    expected = 1.0 - steps * 2e-5  # 0.99
    assert w_rn.float().mean().item() == 1.0  # the stall bf16 training would hit
    assert abs(w_sr.float().mean().item() - expected) < 1e-3


def test_state_is_bf16_for_bf16_weights_and_chunking_changes_nothing() -> None:
    torch.manual_seed(1)
    base = torch.randn(1000, dtype=torch.float32)
    grads = [torch.randn(1000) for _ in range(3)]
    results = []
    for chunk in (1 << 24, 37):
        w = torch.nn.Parameter(base.clone())
        opt = BF16AdamW([w], lr=1e-3, chunk_elements=chunk)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1])
    w16 = torch.nn.Parameter(torch.zeros(10, dtype=torch.bfloat16))
    opt = BF16AdamW([w16])
    w16.grad = torch.ones_like(w16)
    opt.step()
    assert opt.state[w16]["exp_avg"].dtype == torch.bfloat16
