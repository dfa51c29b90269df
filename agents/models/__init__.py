"""Synthetic models: random-weight GGUF files with published model shapes.

Model weights cannot be downloaded onto the farm, so the agent writes them:
``presets`` holds the published shapes (OLMoE-1B-7B, OLMo-1B, Llama-3.2-1B,
Qwen2.5-1.5B, Gemma-2-2B and two tiny test models) and their llama.cpp tensor
tables, ``gguf_writer`` is a streaming GGUF v3 writer with fast deterministic
random F32/F16/Q8_0/Q4_0 data, and ``synth`` ties them together
(``synthesize``) and caches files on the device (``cached_model``).

Standard library only, Python 3.8+, like the rest of the agent. See
docs/models.md.
"""
