"""Flax ports of the StableAnimator networks, one model per file."""
