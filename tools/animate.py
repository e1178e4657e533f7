r"""`sa-animate`: animate a reference photo with a pose sequence.

  sa-animate --checkpoint ckpt/ --input case/ --out out/case.mp4          # an sa-prep folder
  sa-animate --checkpoint ckpt/ --reference ref.png --poses poses/ --face-embedding face.npy \
      --out out.mp4 --width 512 --height 512 --hjb --face-masks faces/ --reference-face-mask mask.png
  sa-animate --out outputs/sample.mp4     # no checkpoint: bundled sample, tiny demo model
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from tqdm import tqdm

from sa_jax import animate
from tools import setup_logging

logger = logging.getLogger('sa-animate')


def _parser() -> argparse.ArgumentParser:
  o = animate.Options()
  p = argparse.ArgumentParser(prog='sa-animate', description=__doc__.split('\n')[0].replace('`', ''),
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--checkpoint', help='sa-convert output; omit for the bundled demo model and sample')
  p.add_argument('--input', help='an sa-prep folder (reference.png, poses/, faces/, ...)')
  p.add_argument('--reference', help='reference photo')
  p.add_argument('--poses', help='folder of pose skeleton frames frame_<i>.png')
  p.add_argument('--face-masks', help='folder of per-frame face masks (HJB), at the generation size')
  p.add_argument('--reference-face-mask', help='face mask of the reference photo (HJB)')
  p.add_argument('--face-embedding', help='512-d reference face embedding .npy (sa-prep writes one)')
  p.add_argument('--insightface-root', help='ROOT with models/antelopev2 to compute the embedding')
  p.add_argument('--out', required=True, help='output .mp4; OUT.gif and OUT_frames/ are written too')
  p.add_argument('--overwrite', action='store_true', help='replace existing outputs')
  p.add_argument('--width', type=int, default=o.width, help='generation width (multiple of 64)')
  p.add_argument('--height', type=int, default=o.height, help='generation height (multiple of 64)')
  p.add_argument('--steps', type=int, default=o.steps, help='Euler denoising steps')
  p.add_argument('--guidance', type=float, default=o.max_guidance, help='guidance at the last frame')
  p.add_argument('--min-guidance', type=float, help='guidance at the first frame (None: --guidance, no ramp)')
  p.add_argument('--tile-size', type=int, default=o.tile_size,
                 help='frames per UNet tile (shrunk to the clip when shorter)')
  p.add_argument('--tile-overlap', type=int, default=o.tile_overlap, help='frames shared by neighbouring tiles')
  p.add_argument('--fps', type=int, default=o.fps, help='conditioning fps and output frame rate')
  p.add_argument('--motion-bucket-id', type=float, default=o.motion_bucket_id, help='SVD motion conditioning')
  p.add_argument('--noise-aug-strength', type=float, default=o.noise_aug_strength,
                 help='noise added to the reference latents')
  p.add_argument('--decode-chunk-size', type=int, default=o.decode_chunk_size,
                 help='frames per VAE decoder call (changes the result, as in the reference)')
  p.add_argument('--seed', type=int, default=o.seed, help='seed of the initial noise and noise augmentation')
  p.add_argument('--hjb', action='store_true', help='HJB face correction (needs face masks)')
  p.add_argument('--hjb-start', type=int, default=o.hjb_start, help='first refine step (0-based)')
  p.add_argument('--hjb-end', type=int, default=o.hjb_end, help='last refine step (inclusive)')
  p.add_argument('--hjb-iterations', type=int, default=o.hjb_iterations, help='Adam iterations per refine step')
  p.add_argument('--hjb-eta', type=float, default=o.hjb_eta,
                 help='learning rate scale: step i uses eta * (1 - i / steps)')
  p.add_argument('--unet-batch-size', type=int, help='UNet rows per call (bounds memory)')
  p.add_argument('--query-chunk-size', type=int, help='spatial attention query chunk (bounds memory)')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default=o.dtype, help='compute dtype')
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  setup_logging()
  inputs = animate.Inputs(folder=args.input, reference=args.reference, poses=args.poses,
                          face_masks=args.face_masks, reference_face_mask=args.reference_face_mask,
                          face_embedding=args.face_embedding, insightface_root=args.insightface_root)
  width, height = args.width, args.height
  if args.checkpoint is None:
    logger.info('no --checkpoint: animating the bundled sample (%s) with the DEMO model, the tiny '
                'config with seeded random weights. The output shows the pipeline running, not a '
                'trained model; convert the release with sa-convert for real results.', animate.SAMPLE_DIR)
    if not any([args.input, args.reference, args.poses]):
      inputs = animate.Inputs(folder=animate.SAMPLE_DIR)
      width = height = None  # the sample's own size
  options = animate.Options(
      width=width, height=height, steps=args.steps,
      min_guidance=args.guidance if args.min_guidance is None else args.min_guidance,
      max_guidance=args.guidance, tile_size=args.tile_size, tile_overlap=args.tile_overlap, fps=args.fps,
      motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
      decode_chunk_size=args.decode_chunk_size, seed=args.seed, hjb=args.hjb, hjb_start=args.hjb_start,
      hjb_end=args.hjb_end, hjb_iterations=args.hjb_iterations, hjb_eta=args.hjb_eta,
      unet_batch_size=args.unet_batch_size, query_chunk_size=args.query_chunk_size, dtype=args.dtype)
  params, config = animate.load_model(args.checkpoint, need_face_embedder=args.hjb)
  with tqdm(total=args.steps, desc='denoising', unit='step') as bar:
    frames, options = animate.animate(params, config, inputs, options, progress=lambda i: bar.update(1))
  written = animate.write_outputs(frames, args.out, options.fps, overwrite=args.overwrite)
  logger.info('%d frames at %dx%d -> %s', len(frames), options.width, options.height,
              ', '.join(map(str, written)))


if __name__ == '__main__':
  main()
