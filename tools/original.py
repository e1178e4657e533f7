r"""The original StableAnimator pipeline on a CPU: the baseline of `python -m tools.bench reference`.

Run by the Python of `tools/install_original.sh` (torch 2.13, diffusers 0.31, transformers 4.35),
with a checkout of Francis-Rings/StableAnimator; sa-jax never imports this file:

  .venv-original/bin/python tools/original.py --stableanimator StableAnimator/ pipeline \
      --weights tests/reference/pipeline --case bench_case/ --width 64 --height 128 --steps 4 ...
  .venv-original/bin/python tools/original.py --stableanimator StableAnimator/ unet \
      --unet-config '{"block_out_channels": [320, 640, 1280, 1280], ...}' --frames 4 --latent-size 32
  .venv-original/bin/python tools/original.py --stableanimator StableAnimator/ vae_decode \
      --vae-config '{"block_out_channels": [128, 256, 512, 512], ...}' --frames 4 --latent-size 32
  .venv-original/bin/python tools/original.py --stableanimator StableAnimator/ iresnet \
      --iresnet-config '{"layers": [3, 13, 30, 3], "num_features": 512}' --batch 4

It builds the pipeline as the original's `inference_op.py` does (its attention processors, the
release `unet.pth`, PoseNet, the face encoder, the IResNet of the HJB face loss, the scheduler with
the face model) from the weights of a reference `pipeline` case (tests/reference/README.md), runs
`InferenceAnimationProPipeline` once on the case folder (`reference.png`, `poses/`, `faces/`,
`reference_face_mask.png`, `face_embedding.npy`) and prints one JSON line: the seconds of the
pipeline call and of the whole process so far. `unet` times one denoising step's UNet calls as the
pipeline makes them (unconditional, then conditional with pose latents; batch 1 each) with random
weights of a given config, e.g. the release widths; `vae_decode` one decoder call on a chunk of
latents; `iresnet` the HJB inner step's embedder work (forward and backward to the faces). Each
prints its median seconds over `--repeats` calls after a warm-up.

On a CPU the original needs stand-ins (docs/performance.md): `xformers.ops`
(`memory_efficient_attention` as softmax attention), `torch.cuda.device` and `empty_cache` (no-ops),
and an `insightface` module (imported, unused: the face embedding is the case's file).
"""

import argparse
import contextlib
import importlib.machinery
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                      # run as a script by another Python: tests.parity.reference

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tests.parity import reference  # noqa: E402


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, **_):
  """xformers' attention on `[B, M, K]` or `[B, M, H, K]` inputs: softmax(q k^T * scale) v."""
  four_d = query.ndim == 4
  if four_d:                                                   # xformers' BMHK -> torch's BHMK
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))
  scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
  out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias, dropout_p=p,
                                                         scale=scale)
  return out.transpose(1, 2) if four_d else out


def _module(name: str, **attributes) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__spec__ = importlib.machinery.ModuleSpec(name, None)
  module.__dict__.update(attributes)
  sys.modules[name] = module
  return module


def install_cpu_stand_ins() -> None:
  """The stand-ins the original needs on a CPU (see the module docstring); before it is imported."""
  ops = _module('xformers.ops', memory_efficient_attention=memory_efficient_attention)
  _module('xformers', ops=ops, __version__='0.0.0')
  from diffusers.utils import import_utils
  import_utils._xformers_available = True
  app = _module('insightface.app', FaceAnalysis=None)
  _module('insightface', app=app)
  torch.cuda.device = lambda *args, **kwargs: contextlib.nullcontext()
  torch.cuda.empty_cache = lambda: None


def _float32_state(path: Path) -> dict[str, torch.Tensor]:
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def set_attention_processors(unet) -> None:
  """The processors `inference_op.py` puts in the UNet: the original's plain one in spatial
  self-attention, its face-ID one in spatial cross-attention (`id_to_k`/`id_to_v` copied from
  `to_k`/`to_v`), diffusers' xformers one in temporal attention."""
  from diffusers.models.attention_processor import XFormersAttnProcessor
  from animation.modules.attention_processor import AnimationAttnProcessor
  from animation.modules.attention_processor_normalized import AnimationIDAttnNormalizedProcessor
  state = unet.state_dict()
  widths = unet.config.block_out_channels
  processors = {}
  for name in unet.attn_processors:
    if 'temporal_transformer_blocks' in name:
      processors[name] = XFormersAttnProcessor()
    elif 'transformer_blocks' in name:
      level = list(reversed(widths)) if name.startswith('up_blocks') else widths
      hidden = widths[-1] if name.startswith('mid_block') else level[int(name.split('.')[1])]
      if name.endswith('attn1.processor'):
        processors[name] = AnimationAttnProcessor(hidden_size=hidden, cross_attention_dim=None, rank=128)
      else:
        layer = name.split('.processor')[0]
        processors[name] = AnimationIDAttnNormalizedProcessor(
            hidden_size=hidden, cross_attention_dim=unet.config.cross_attention_dim, rank=128)
        processors[name].load_state_dict({'id_to_k.weight': state[layer + '.to_k.weight'],
                                          'id_to_v.weight': state[layer + '.to_v.weight']}, strict=False)
  unet.set_attn_processor(processors)


def build_pipeline(weights: dict[str, Path]):
  """The pipeline of `inference_op.py` on CPU in float32, from a reference case's weights."""
  from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
  from animation.helper.backbones.iresnet import IBasicBlock, IResNet
  from animation.modules.id_encoder import FusionFaceId
  from animation.modules.pose_net import PoseNet
  from animation.modules.refined_vae import RefinedAutoencoderKLTemporalDecoder
  from animation.modules.unet import UNetSpatioTemporalConditionModel
  from animation.pipelines.euler_discrete_pro import EulerDiscreteSchedulerPro
  from animation.pipelines.inference_pipeline_animation_pro import InferenceAnimationProPipeline

  unet_root = weights['unet']
  unet = UNetSpatioTemporalConditionModel.from_pretrained(unet_root, subfolder='unet', variant='fp16').float()
  set_attention_processors(unet)
  unet.load_state_dict(_float32_state(unet_root / 'unet.pth'), strict=True)

  pose_net = PoseNet(noise_latent_channels=unet.config.block_out_channels[0])
  pose_net.load_state_dict(_float32_state(weights['pose_net']), strict=True)
  face_state = _float32_state(weights['face_encoder'])
  face_config = reference.Case(weights['face_encoder'].parent).meta['config']
  face_encoder = FusionFaceId(cross_attention_dim=face_config['cross_attention_dim'],
                              id_embeddings_dim=face_config['id_embeddings_dim'],
                              clip_embeddings_dim=face_config['clip_embeddings_dim'],
                              num_tokens=face_config['num_tokens'])
  face_encoder.load_state_dict(face_state, strict=True)
  arcface_config = reference.Case(weights['face_embedding_extractor'].parent).meta['config']
  arcface = IResNet(IBasicBlock, arcface_config['layers'], num_features=arcface_config['num_features'], fp16=False)
  arcface.load_state_dict(_float32_state(weights['face_embedding_extractor']), strict=True)
  arcface.eval()
  scheduler = EulerDiscreteSchedulerPro.from_pretrained(weights['scheduler'])
  scheduler.init_face_model(face_embedding_extractor=arcface)
  pipeline = InferenceAnimationProPipeline(
      vae=RefinedAutoencoderKLTemporalDecoder.from_pretrained(weights['vae'], variant='fp16').float(),
      image_encoder=CLIPVisionModelWithProjection.from_pretrained(weights['image_encoder']),
      unet=unet, scheduler=scheduler,
      feature_extractor=CLIPImageProcessor.from_pretrained(weights['feature_extractor']),
      pose_net=pose_net, face_encoder=face_encoder).to(device='cpu', dtype=torch.float32)
  for module in (pipeline.vae, pipeline.image_encoder, unet, pose_net, face_encoder):
    module.requires_grad_(False)
  return pipeline, arcface


def _box(path: Path) -> list[int]:
  """[y_min, y_max, x_min, x_max] (inclusive) of a mask's 255 pixels, as inference_op.py reads them."""
  ys, xs = np.nonzero(np.asarray(Image.open(path).convert('L')) == 255)
  return [int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())]


def _frames(folder: Path) -> list[Path]:
  return sorted(folder.glob('frame_*.png'), key=lambda p: int(p.stem.split('_')[1]))


def run(args: argparse.Namespace) -> dict[str, Any]:
  case = Path(args.case)
  pipeline, arcface = build_pipeline(reference.Case(Path(args.weights)).weights())
  photo = Image.open(case / 'reference.png').convert('RGB')
  poses = [Image.open(p).convert('RGB').resize((args.width, args.height)) for p in _frames(case / 'poses')]
  y0, y1, x0, x1 = _box(case / 'reference_face_mask.png')
  face = torch.from_numpy(np.asarray(photo, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
  face = torch.nn.functional.interpolate(face[:, :, y0:y1 + 1, x0:x1 + 1], size=(112, 112), mode='bilinear',
                                         align_corners=False)
  mask = torch.from_numpy(np.asarray(Image.open(case / 'reference_face_mask.png').convert('L'), np.float32) / 255)
  started = time.perf_counter()
  with torch.no_grad():
    reference_embedding = arcface(face)
  frames = pipeline(
      image=photo, image_pose=poses, height=args.height, width=args.width, num_frames=len(poses),
      tile_size=args.tile_size, tile_overlap=args.tile_overlap, decode_chunk_size=args.decode_chunk_size,
      motion_bucket_id=127.0, fps=7, min_guidance_scale=args.guidance, max_guidance_scale=args.guidance,
      noise_aug_strength=0.0, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
      output_type='np', validation_image_id_ante_embedding=np.load(case / 'face_embedding.npy', allow_pickle=False),
      refine_reference_face_embeddings=reference_embedding,
      target_face_mask_list=[_box(p) for p in _frames(case / 'faces')], reference_face_mask=mask[None],
      start_refine_step=args.hjb_start, end_refine_step=args.hjb_end,
      num_optimization_iter=args.hjb_iterations).frames[0]
  finished = time.perf_counter()
  if not np.all(np.isfinite(frames)):
    raise RuntimeError('the original pipeline produced non-finite frames')
  return {'pipeline_s': finished - started, 'process_s': finished - STARTED, 'frames': len(frames),
          'versions': _versions()}


def run_unet(args: argparse.Namespace) -> dict[str, Any]:
  """One denoising step's UNet work as the original pipeline does it: an unconditional call without
  pose latents and a conditional one with them, batch 1 each, random weights of `--unet-config`."""
  from animation.modules.unet import UNetSpatioTemporalConditionModel
  torch.manual_seed(0)
  unet = UNetSpatioTemporalConditionModel(**json.loads(args.unet_config)).eval().requires_grad_(False)
  set_attention_processors(unet)
  c, f, size = unet.config, args.frames, args.latent_size
  draw = lambda *shape: torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
  sample, context = draw(1, f, c.in_channels, size, size), draw(1, 5, c.cross_attention_dim)
  time_ids, pose = torch.tensor([[6.0, 127.0, 0.02]]), draw(f, c.block_out_channels[0], size, size)

  def step():
    for pose_latents in (None, pose):
      unet(sample, 1.0, encoder_hidden_states=context, added_time_ids=time_ids, pose_latents=pose_latents,
           return_dict=False)

  with torch.no_grad():
    seconds = _timed(step, args.repeats)
  return {'run_s': seconds, 'parameters': sum(p.numel() for p in unet.parameters()), 'versions': _versions()}


def _timed(step, repeats: int) -> float:
  """Median seconds of `step()` over `repeats` calls after one warm-up call."""
  step()
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
  return float(np.median(times))


def run_vae_decode(args: argparse.Namespace) -> dict[str, Any]:
  """One decoder call on a chunk of `--frames` latents, as the pipeline decodes, random weights of
  `--vae-config`."""
  from animation.modules.refined_vae import RefinedAutoencoderKLTemporalDecoder
  torch.manual_seed(0)
  vae = RefinedAutoencoderKLTemporalDecoder(**json.loads(args.vae_config)).eval().requires_grad_(False)
  z = torch.randn((args.frames, vae.config.latent_channels, args.latent_size, args.latent_size),
                  generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    seconds = _timed(lambda: vae.decode(z, num_frames=args.frames).sample, args.repeats)
  return {'run_s': seconds, 'parameters': sum(p.numel() for p in vae.parameters()), 'versions': _versions()}


def run_iresnet(args: argparse.Namespace) -> dict[str, Any]:
  """The HJB inner step's embedder work: IResNet forward and backward to its input (weights frozen,
  eval mode) on `--batch` 112x112 faces, random weights of `--iresnet-config`."""
  from animation.helper.backbones.iresnet import IBasicBlock, IResNet
  config = json.loads(args.iresnet_config)
  torch.manual_seed(0)
  arcface = IResNet(IBasicBlock, config['layers'], num_features=config['num_features'], fp16=False)
  arcface.eval().requires_grad_(False)
  faces = torch.randn((args.batch, 3, 112, 112), generator=torch.Generator().manual_seed(1))
  reference = torch.randn((1, config['num_features']), generator=torch.Generator().manual_seed(2))

  def step():
    x = faces.clone().requires_grad_(True)
    (arcface(x) * reference).sum().backward()
    return x.grad

  seconds = _timed(step, args.repeats)
  return {'run_s': seconds, 'parameters': sum(p.numel() for p in arcface.parameters()), 'versions': _versions()}


def _versions() -> dict[str, Any]:
  import diffusers
  import transformers
  return {'torch': torch.__version__, 'diffusers': diffusers.__version__, 'transformers': transformers.__version__,
          'torch_threads': torch.get_num_threads()}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--stableanimator', required=True, help='checkout of Francis-Rings/StableAnimator')
  tasks = p.add_subparsers(dest='task', required=True)
  pipeline = tasks.add_parser('pipeline', help='the whole pipeline on a case folder')
  pipeline.add_argument('--weights', required=True, help="a reference 'pipeline' case folder (its case.json)")
  pipeline.add_argument('--case', required=True, help='the inputs: reference.png, poses/, faces/, ...')
  for name, kind in (('width', int), ('height', int), ('steps', int), ('guidance', float), ('tile-size', int),
                     ('tile-overlap', int)):
    pipeline.add_argument(f'--{name}', type=kind, required=True)
  pipeline.add_argument('--decode-chunk-size', type=int, default=4)
  pipeline.add_argument('--hjb-start', type=int, default=1000, help='first HJB step (beyond the steps: off)')
  pipeline.add_argument('--hjb-end', type=int, default=1000)
  pipeline.add_argument('--hjb-iterations', type=int, default=3)
  unet = tasks.add_parser('unet', help="one step's UNet calls (uncond, cond) with random weights")
  unet.add_argument('--unet-config', required=True, help='UNetSpatioTemporalConditionModel arguments, JSON')
  unet.add_argument('--frames', type=int, required=True)
  unet.add_argument('--latent-size', type=int, required=True)
  vae = tasks.add_parser('vae_decode', help='one VAE decoder call on a chunk of latents, random weights')
  vae.add_argument('--vae-config', required=True, help='RefinedAutoencoderKLTemporalDecoder arguments, JSON')
  vae.add_argument('--frames', type=int, required=True)
  vae.add_argument('--latent-size', type=int, required=True)
  iresnet = tasks.add_parser('iresnet', help='IResNet forward and backward to its input, random weights')
  iresnet.add_argument('--iresnet-config', required=True, help='{"layers": [...], "num_features": N}')
  iresnet.add_argument('--batch', type=int, required=True)
  for task in (unet, vae, iresnet):
    task.add_argument('--repeats', type=int, default=3, help='timed calls after one warm-up (median printed)')
  return p


def main() -> None:
  args = parser().parse_args()
  sys.path.insert(0, str(Path(args.stableanimator).resolve()))
  install_cpu_stand_ins()
  tasks = {'pipeline': run, 'unet': run_unet, 'vae_decode': run_vae_decode, 'iresnet': run_iresnet}
  print(json.dumps(tasks[args.task](args)))


if __name__ == '__main__':
  main()
