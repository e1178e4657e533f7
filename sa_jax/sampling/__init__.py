"""Sampling: the EDM Euler schedule, temporal tiling, the HJB face correction and the sampler."""
