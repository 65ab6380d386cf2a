"""The tiny world: a synthetic verifiable task family, its tokenizer, and a warm-started tiny Qwen2 policy."""
