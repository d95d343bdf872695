"""Triton kernels (imported as `evicctl.kernels`); importing this never imports Triton."""
