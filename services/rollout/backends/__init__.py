"""Generation backends: replay (recorded text) today; hf and vllm come with the rollout workers."""
