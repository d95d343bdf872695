"""Glue between evicctl and serving engines. Nothing here is imported by the core library;
each engine's module needs that engine installed (see docs/vllm.md for vLLM)."""
