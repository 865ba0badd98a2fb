"""Kernels: attention over the paged KV cache and quantized GEMMs, each with a torch
reference, chosen at one dispatch point (`dispatch.py`)."""
