"""`trainer.model_flops`: the FLOPs of a train step's maths, whatever remat and chunking do."""

import jax

from configs import train as train_configs
from sa_jax.training import trainer
from tests.micro_model import micro_models


def test_model_flops_count_chunked_attention_whole():
  config = train_configs.get_config('tiny')
  # 64x64 frames give 8x8 latents: 64 spatial tokens, in 4 chunks of 16 queries.
  config.remat, config.query_chunk_size = False, 16
  models, devices = micro_models(), jax.devices()[:1]
  assembly, batch, key = trainer.assemble_for_shapes(config, models, devices)
  chunked = assembly.train_step.lower(assembly.abstract_state, batch, key).cost_analysis()['flops']
  # XLA's cost analysis counts a loop's body once: the chunked program's own count misses three of
  # the four chunks of every spatial attention's logits and weighted sum, which is why model_flops
  # lowers the step whole (and without remat, so that nothing counts twice).
  assert 0 < chunked < trainer.model_flops(config, models, devices)
