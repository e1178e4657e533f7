"""sa-jax: StableAnimator (identity-preserving human image animation) in JAX/Flax."""
