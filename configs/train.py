r"""Fine-tuning StableAnimator (SPEC §5): the release setup, and a tiny variant that trains on a CPU.

Release (`train.py` of the original, as its README runs it): 512x512, 16 frames at stride 4,
AdamW lr 1e-5 (betas 0.9/0.999, eps 1e-8, weight decay 1e-2), constant schedule, batch 1 per
device, gradient checkpointing, fp32 loss; PoseNet, the face encoder and the UNet's attention
blocks are trained:

  sa-convert --release checkpoints/ --out ckpt/
  sa-train --config configs/train.py --workdir runs/finetune \
      --init ckpt/ --config.data.roots=animation_data/video_rec_path.txt

  Per-device memory (XLA's estimate of the compiled step) is in docs/training.md.

  LoRA (docs/training.md): `--config.lora.rank=8 --config.lora.alpha=8` trains rank-8 adapters on
  the attention projections alone; `--config.dtype=bfloat16` computes in bfloat16 with float32
  master weights.

Tiny (`configs/train.py:tiny`): the tiny model with seeded random weights on synthetic clips:

  python -m tools.make_clips clips/ --clips 4 --frames 24 --width 64 --height 64
  sa-train --config configs/train.py:tiny --workdir runs/tiny --config.data.roots=clips/

  Measured on the 2-core CI machine (docs/training.md): 5.5 steps/s after a ~100 s compile; the
  loss (means of 50 steps) falls from 0.72 to about 0.55 over the 600 steps, 3 min 50 s in all.

Demo (`configs/train.py:demo`): the shipped demo model (`sa_jax/assets/demo_model`,
`configs/svd_xt.py:demo`) trained from scratch (`trained='all'`) on `sa-make-dataset` characters at
64x64, three clips of 4 frames a step (of each clip's 16 frames), from the checkpoint that
`sa-init-model` writes (docs/training.md, "Training from scratch"). Exactly these commands made it:

  sa-make-dataset data/ --clips 256 --eval-clips 16 --size 64
  sa-init-model --clips data/train --face-embedder data/face_embedder.npz --out runs/init --vae-steps 2500
  sa-train --config configs/train.py:demo --init runs/init --workdir runs/demo --config.data.roots=data/train
  sa-train --workdir runs/demo --export_checkpoint runs/demo/model --ema --export_dtype bfloat16

  On this 2-core CPU: the dataset 60 min (its keypoint estimator for sa-eval is most of it), with
  sa-init-model beside it, 49 min (VAE: L1 0.059 on its last batch of [-1, 1] pixels); the UNet
  40 min (1.0 s a step, compile 2.5 min), loss (means of 50 steps) 1.19 at 50, 0.81 at 200, 0.58
  at 500, 0.41 at 1000, 0.36 at 1500, 0.33 at 2000. The cosine decays over 3300 steps and the run
  stops at 2000, within the hour. On the 16 held-out clips (sa-eval, 10 steps): PSNR 17.86
  against 8.90 for its initialisation, pose error 3.66 px against 6.57 (README, "The demo model").
  One clip of 12 frames a step (the same frames, the same time) reached PSNR 16.66 and 4.12 px.

Any field can be overridden with `--config.<section>.<field>=value`; unknown fields are refused.
"""

import ml_collections

from sa_jax import sharding


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """`variant`: '' (release fine-tuning), 'tiny' or 'demo'."""
  if variant not in ('', 'tiny', 'demo'):
    raise ValueError(f"unknown variant {variant!r}; expected '', 'tiny' or 'demo'")
  if variant == 'demo':
    return _demo(get_config('tiny'))
  tiny = variant == 'tiny'
  config = ml_collections.ConfigDict()
  config.seed = 42                  # the run's key: step n draws from fold_in(key, n); data order too
  config.num_steps = 600 if tiny else 100_000
  config.dtype = 'float32'          # compute dtype of the networks: float32 or bfloat16 (loss: float32)
  config.remat = not tiny           # recompute UNet blocks in the backward pass (release: on)
  config.query_chunk_size = 0 if tiny else 1024   # spatial attention queries per chunk, each chunk's
                                    # logits recomputed in the backward pass (0: all at once)
  config.encode_chunk_size = 0 if tiny else 4    # frames of each video per VAE encoder pass, the passes
                                    # one after another (0: all at once); a divisor of num_frames, a
                                    # multiple of the mesh's context
  config.trained = 'release'        # what trains: 'release' (PoseNet, face encoder, the UNet's attention
                                    # blocks, as the original) or 'all' (every UNet parameter too: from scratch)
  config.ema_decay = 0.0            # EMA of the trained parameters; 0: none (the release)
  config.compile_cache = True       # JAX's persistent compilation cache (a restarted run skips compiling)
  config.compile_cache_dir = ''     # '': $XDG_CACHE_HOME/sa-jax/jax (default ~/.cache/sa-jax/jax)

  config.model = dict(
      init='',                      # sa-jax checkpoint to fine-tune (sa-convert of the release)
      tiny=tiny,                    # without init: the tiny model with seeded random weights
  )
  config.data = dict(
      roots='',                     # comma-separated clip folders, folders of clips, clip lists, packed datasets;
                                    # 'WxH:path' reads path at W x H (one size per step, interleaved)
      width=64 if tiny else 512,    # training size, multiples of 64
      height=64 if tiny else 512,
      num_frames=4 if tiny else 16,   # frames per sample
      stride=4,                     # frame stride of a sample (SPEC §5)
      per_device_batch_size=1,      # videos per device per step (the release: 1); with context=c, per c devices
      worker_count=0 if tiny else 4,  # grain worker processes per host (0: in the main process)
      max_skipped_steps=100,        # stop after this many steps in a row without a readable clip (0: never)
  )
  config.loss = dict(
      fps=7,                        # conditioned as fps - 1 = 6, as train.py
      motion_bucket_id=127.0,
      noise_aug_strength=0.02,
      conditioning_dropout_prob=0.1,  # CLIP token dropped for p < 0.2, reference latents for 0.1 <= p < 0.3
      noise_d_low=32.0,             # noise resolutions of the sigma law (SPEC §5 step 4); smaller: noisier
      noise_d_high=64.0,
  )
  config.optimizer = dict(
      learning_rate=1e-3 if tiny else 1e-5,
      schedule='constant',          # constant (the release), cosine or linear decay
      warmup_steps=0,
      decay_steps=0,                # decay length for cosine/linear
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=1e-2,
      max_grad_norm=0.0,            # 0: no clipping (the release)
  )
  config.lora = dict(
      rank=0,                       # low-rank adapters on `targets` (only they train); 0: none (the release)
      alpha=1.0,                    # the adapters' product is scaled by alpha / rank
      targets='to_q,to_k,to_v,to_out',  # module names among the trained parameters (comma-separated)
  )
  config.log_every = 50                          # metrics to TensorBoard and metrics.jsonl
  config.checkpoint = dict(
      every=300 if tiny else 2000,  # steps between checkpoints (and one at the end); a multiple of log_every
      max_to_keep=3,
      async_save=True,              # write in the background while training goes on
  )
  config.validation = dict(
      every=0,                      # steps between validation videos (0: none; the original: 500)
      case='',                      # an sa-prep folder (reference.png, poses/, face_embedding.npy)
      num_steps=25,
      guidance=3.0,
  )
  config.mesh = dict(
      shape='fsdp=-1',              # e.g. 'data=2,fsdp=4' or 'fsdp=4,context=2' (frames split); -1: the rest
      rules=dict(sharding.LOGICAL_RULES),   # logical axis -> mesh axes (names in sa_jax/sharding.py)
  )
  config.distributed = dict(
      enabled=False,                # jax.distributed.initialize (TPU pods and SLURM detect the rest)
      coordinator_address='',       # host:port of process 0 ('' : detected)
      num_processes=0,              # 0: detected
      process_id=-1,                # -1: detected
  )
  return config


def _demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The bundled demo model (`configs/svd_xt.py:demo`) trained from scratch on `sa-make-dataset` clips."""
  config.trained = 'all'
  config.num_steps = 2000
  config.ema_decay = 0.998
  config.model.tiny = False
  # Three videos of 4 frames a step (the reference: one of each clip's 12 others): as many frames and
  # time as one video of 12, three references and pose sequences to learn from instead of one.
  config.data.update(num_frames=4, stride=1, per_device_batch_size=3)
  config.optimizer.update(learning_rate=5e-4, schedule='cosine', warmup_steps=200, decay_steps=3300,
                          max_grad_norm=1.0)
  config.checkpoint.every = 500
  return config
