"""The in-process manager an engine embeds. Importing this starts nothing (no CUDA, no DB)."""
