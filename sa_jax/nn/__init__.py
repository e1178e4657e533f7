"""Building blocks shared by every sa-jax model: one copy of each."""
