"""The embedded model learns: a few chat examples are memorized in a few dozen CPU steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.model.loading import load_model_and_tokenizer

EXAMPLES = [
    [{"role": "user", "content": "What is 3 + 4?"},
     {"role": "assistant", "content": "🤔🤔🤔🤔 (add 3 4) 🛑🛑 7"}],
    [{"role": "user", "content": "Are all cats animals?"},
     {"role": "assistant", "content": "🤔🤔🤔🤔 (all cat animal) 🛑🛑 yes"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": "What is 12 times 3?"},
     {"role": "assistant", "content": "🤔🤔🤔🤔 (mul 12 3) 🛑🛑🛑 36"}],
]


@pytest.mark.usefixtures("one_thread")
def test_tiny_model_overfits_a_handful_of_chats(embedded_dir: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(embedded_dir)
    rendered = [
        tokenizer.apply_chat_template(
            chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for chat in EXAMPLES
    ]
    width = max(len(r["input_ids"]) for r in rendered)
    ids = torch.full((len(rendered), width), tokenizer.pad_token_id)
    labels = torch.full((len(rendered), width), -100)
    attention = torch.zeros((len(rendered), width), dtype=torch.long)
    for row, r in enumerate(rendered):
        n = len(r["input_ids"])
        ids[row, :n] = torch.tensor(r["input_ids"])
        attention[row, :n] = 1
        # Loss only on assistant tokens, as the trainer does.
        mask = torch.tensor(r["assistant_masks"], dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids[row, :n], -100)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    assert losses[-1] < 1.0, losses
