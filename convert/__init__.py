"""Import the released PyTorch weights into sa-jax parameter pytrees, and export them back."""
