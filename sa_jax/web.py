"""The `sa-web` page: a Gradio app over `sa_jax.serve.handle` (inputs, options, progress, videos).

Requests queue one at a time (Gradio's queue, concurrency 1: one device). Each gets its own folder
under `workdir/requests/`, removed once Gradio has copied the response's videos into its cache;
Gradio keeps uploads and responses in its own cache (`GRADIO_TEMP_DIR`, which `sa-web` points into
`workdir`) and deletes them after `CACHE_SECONDS`. A bad upload becomes a one-line `gr.Error` on
the page; any other failure shows Gradio's bare "Error" (the traceback goes to the server log only).
The page loads nothing from other hosts: no analytics, no web fonts, no server-side rendering.
"""

import contextvars
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils

from sa_jax import animate, serve

logger = logging.getLogger(__name__)

CACHE_SECONDS = 3600           # Gradio deletes uploads and responses older than this, checked as often
QUEUE_SIZE = 16                # requests waiting at most; later ones are told the queue is full
MAX_UPLOAD = '1gb'
VIDEO_HEIGHT = 420             # pixels on the page
# System fonts: the default theme would fetch web fonts from another host.
THEME = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                          font_mono=['ui-monospace', 'monospace'])


def make_app(model: serve.Model, workdir: Path) -> gr.Blocks:
  """The page of `model`; request folders and the sample's example zip go under `workdir` (set
  `GRADIO_TEMP_DIR` before calling to keep Gradio's cache there too)."""
  workdir = Path(workdir)
  requests_dir = workdir / 'requests'
  requests_dir.mkdir(parents=True, exist_ok=True)
  (workdir / 'examples').mkdir(exist_ok=True)
  uploads = Path(gradio_utils.get_upload_folder())
  sample = serve.sample_zip(workdir / 'examples' / 'sample.zip')
  reference_example = shutil.copyfile(animate.SAMPLE_DIR / 'reference.png',
                                      workdir / 'examples' / 'reference.png')
  run = model.run
  with gr.Blocks(title='sa-jax', analytics_enabled=False, delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as app:
    gr.Markdown(_header(model))
    with gr.Row():
      with gr.Column():
        reference = gr.Image(label='Reference photo', type='filepath', sources=['upload'], elem_id='reference')
        with gr.Tab('Pose zip'):
          poses = gr.File(label='Poses: a zip of an sa-prep folder or of pose frames', file_types=['.zip'],
                          elem_id='poses')
        with gr.Tab('Driving video'):
          video = gr.Video(label='Driving video (the sa-prep steps run on it)', sources=['upload'],
                           interactive=model.can_prepare, elem_id='video')
        with gr.Accordion('Options', open=False):
          with gr.Row():
            width = gr.Number(run.io.width, label='Width (0: the photo\'s)', precision=0, minimum=0, step=64)
            height = gr.Number(run.io.height, label='Height (0: the photo\'s)', precision=0, minimum=0, step=64)
            num_frames = gr.Number(run.io.num_frames, label='Frames (0: all)', precision=0, minimum=0)
          with gr.Row():
            steps = gr.Number(run.sampler.num_steps, label='Steps', precision=0, minimum=1, elem_id='steps')
            guidance = gr.Number(run.sampler.guidance, label='Guidance', minimum=0)
            seed = gr.Number(run.io.seed, label='Seed', precision=0, minimum=0)
          with gr.Row():
            tile_size = gr.Number(run.sampler.tile_size, label='Tile size (frames)', precision=0, minimum=1)
            tile_overlap = gr.Number(run.sampler.tile_overlap, label='Tile overlap', precision=0, minimum=0)
            hjb = gr.Checkbox(False, label='HJB face correction', interactive='face_embedder' in model.params)
        button = gr.Button('Animate', variant='primary', elem_id='animate')
      with gr.Column():
        with gr.Row():
          result = gr.Video(label='Animation', interactive=False, loop=True, height=VIDEO_HEIGHT, elem_id='result')
          skeletons = gr.Video(label='Skeletons (as the model saw them)', interactive=False, loop=True,
                               height=VIDEO_HEIGHT, elem_id='skeletons')
    gr.Examples([[str(reference_example), str(sample)]], inputs=[reference, poses], cache_examples=False,
                label='Bundled sample (an sa-prep folder, zipped)')

    def run_request(reference, poses, video, width, height, num_frames, steps, guidance, seed, tile_size,
                tile_overlap, hjb, progress=gr.Progress()) -> Iterator[tuple[str, str]]:
      options = dict(width=width, height=height, num_frames=num_frames, steps=steps, guidance=guidance,
                     seed=seed, tile_size=tile_size, tile_overlap=tile_overlap, hjb=hjb)
      folder = Path(tempfile.mkdtemp(prefix='request-', dir=requests_dir))
      try:
        try:
          done = serve.handle(model, folder, reference, poses_zip=poses, video=video, options=options,
                              uploads=uploads, progress=_reporter(progress))
        except ValueError as err:
          logger.info('request refused: %s', err)
          raise gr.Error(str(err), print_exception=False) from None
        yield str(done.video), str(done.skeletons)    # Gradio copies both into its cache ...
      finally:
        shutil.rmtree(folder, ignore_errors=True)   # ... before the generator is resumed here

    button.click(run_request, [reference, poses, video, width, height, num_frames, steps, guidance, seed,
                           tile_size, tile_overlap, hjb], [result, skeletons], api_name='animate',
                 concurrency_limit=1)
  app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
  return app


def _reporter(progress: gr.Progress) -> serve.Progress:
  """`serve.Progress` onto Gradio's bar. The sampler reports its steps from a JAX callback thread,
  which lacks the context Gradio finds the request's event in: each report runs in a copy of the
  request thread's context."""
  context = contextvars.copy_context()

  def report(done: int, total: int, stage: str) -> None:
    text = f'{stage} {done}/{total}' if total > 1 else stage
    context.copy().run(progress, done / total, desc=text)
  return report


def _header(model: serve.Model) -> str:
  lines = ['## sa-jax: StableAnimator', 'A reference photo and a pose sequence in, a video of that person '
           'performing the poses out. The first request of a size compiles the model (minutes on a CPU).']
  if model.demo:
    lines.append('**Demo model**: a small model trained on synthetic 64x64 characters; it animates them, '
                 'not photos of people. Start `sa-web --checkpoint DIR` with a converted release for real people.')
  if not model.can_prepare:
    lines.append(f'**Driving videos are off**: {serve.NO_PREP}.')
  return '\n\n'.join(lines)


def launch(app: gr.Blocks, host: str, port: int) -> str:
  """Starts serving `app` on `host:port` in the background (`app.block_thread()` waits, `app.close()`
  stops); returns its URL."""
  app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False, quiet=True,
             show_error=False, ssr_mode=False, max_file_size=MAX_UPLOAD, theme=THEME, footer_links=[])
  return app.local_url
