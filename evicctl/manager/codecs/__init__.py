"""Codecs: names (torch-free parsing and sizes), codec (the Codec interface and registry), quant (group-wise quantization), scorers (token-dropping scores)."""
