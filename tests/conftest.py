"""Test-session setup: 8 simulated CPU devices for the mesh tests (set before JAX starts)."""

import os

os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip()
