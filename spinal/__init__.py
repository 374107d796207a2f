"""SPINAL: layer-by-layer contraction and transport traces of causal language models.

The package root imports nothing heavy, so `spinal runs` and cached `spinal trace` calls start fast.
"""

__version__ = "0.1.0"
