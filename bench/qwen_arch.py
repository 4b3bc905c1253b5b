"""Qwen3-0.6B's published architecture, for the benchmarks that build it with random weights."""

QWEN3_06B = {
    "vocab_size": 151_936, "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40_960, "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip
