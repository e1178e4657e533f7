"""sa-web: the request handler on the demo model, the Gradio app through gradio_client, and the page
in a real headless Chromium. Every request goes to 127.0.0.1.

The demo model animates the bundled sample at its own size (64x64, 16 frames) in 2 steps, as
tests/tools/test_animate.py does; all tests here share one compiled program (sa-web reports each
step from the sampler, a program JAX's persistent cache does not keep, so it compiles once here).
"""

import json
import os
import shutil
import socket
import stat
import zipfile
from pathlib import Path

import imageio_ffmpeg
import jax
import numpy as np
import onnx
import pytest
from PIL import Image

from sa_jax import animate, serve
from tests.prep import synthetic_models
from tests.prep.conftest import RED, VIDEO_COLOURS, write_video
from tools import web as web_tool

SAMPLE = animate.SAMPLE_DIR
FRAMES = len(list((SAMPLE / 'poses').glob('*.png')))
SIZE = Image.open(SAMPLE / 'reference.png').size
OPTIONS = dict(steps=2)                                # at the sample's own size, sa-web's demo default
BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'


def _video(path) -> tuple[int, tuple[int, int]]:
  """(frames, (width, height)) of a video file (or gradio_client's {'video': path}), decoded."""
  reader = imageio_ffmpeg.read_frames(str(path['video'] if isinstance(path, dict) else path))
  size = tuple(next(reader)['size'])
  return sum(1 for _ in reader), size


def _tree(folder) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


@pytest.fixture(scope='module')
def model():
  _, run = web_tool.validate([])         # the settings `sa-web` starts the demo with
  return serve.load_model(None, run)


@pytest.fixture(scope='module')
def uploads(tmp_path_factory):
  """Stands for the server's upload folder: the sample's photo and its zip."""
  folder = tmp_path_factory.mktemp('uploads')
  shutil.copyfile(SAMPLE / 'reference.png', folder / 'reference.png')
  serve.sample_zip(folder / 'sample.zip')
  return folder


# --- the handler, as a function -------------------------------------------------------------------

def test_handler_animates_the_sample(model, uploads, tmp_path):
  before = _tree(uploads)
  reports = []
  result = serve.handle(model, tmp_path, uploads / 'reference.png', poses_zip=uploads / 'sample.zip',
                        options=OPTIONS, uploads=uploads, progress=lambda *r: reports.append(r))
  assert (result.frames, result.width, result.height) == (FRAMES, *SIZE)
  assert _video(result.video) == _video(result.skeletons) == (FRAMES, SIZE)
  assert result.video.parent == tmp_path / 'out'
  assert [r[:2] for r in reports if r[2] == 'denoising'] == [(1, 2), (2, 2)], 'one report per sampler step'
  assert _tree(uploads) == before


def _zip(path, entries) -> Path:
  """A zip of `entries`: name -> bytes, or (bytes, unix mode) for links and special files."""
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in entries.items():
      if isinstance(data, tuple):
        info = zipfile.ZipInfo(name)
        info.external_attr = data[1] << 16
        archive.writestr(info, data[0])
      else:
        archive.writestr(name, data)
  return path


POSE = (SAMPLE / 'poses' / 'frame_0.png').read_bytes()


@pytest.mark.parametrize('make, message', [
    (lambda u: dict(poses_zip=_zip(u / 'p.zip', {'poses/frame_0.png': POSE, '../evil.png': POSE})),
     r"entry '../evil.png' points outside the zip's folder; refused"),
    (lambda u: dict(poses_zip=_zip(u / 'p.zip', {'/tmp/evil.png': POSE})), "entry '/tmp/evil.png' points outside"),
    (lambda u: dict(poses_zip=_zip(u / 'p.zip', {'poses/frame_0.png': (b'/etc/passwd', stat.S_IFLNK | 0o777)})),
     "entry 'poses/frame_0.png' is a link or special file"),
    (lambda u: dict(poses_zip=shutil.copyfile(SAMPLE / 'reference.png', u / 'p.zip')), 'p.zip: not a zip file'),
    (lambda u: dict(poses_zip=_zip(u / 'p.zip', {'notes.txt': b'hello'})),
     r'the zip holds neither an sa-prep folder \(with poses/\) nor pose frames .* found notes.txt'),
    (lambda u: dict(poses_zip=_zip(u / 'p.zip', {'frames/frame_0.png': POSE})),
     'the zip has no face_embedding.npy and this server was started without --insightface-root'),
    (lambda u: dict(poses_zip=u / 'sample.zip', reference=_bytes(u / 'ref.png', b'not an image')),
     'cannot read image ref.png: '),
    (lambda u: dict(poses_zip=u / 'sample.zip', reference=SAMPLE / 'reference.png'),
     'reference reference.png: not an uploaded file'),
    (lambda u: dict(poses_zip=u / 'sample.zip', video=u / 'sample.zip'), 'not both'),
    (lambda u: dict(), 'give a driving video or a zip of poses'),
    (lambda u: dict(video=u / 'sample.zip'), 'started without --dwpose-dir and --insightface-root'),
    (lambda u: dict(poses_zip=u / 'sample.zip', options=dict(steps=0)), r'sampler.num_steps is 0; expected >= 1'),
    (lambda u: dict(poses_zip=u / 'sample.zip', options=dict(width=100)),
     f'resolution 100x{SIZE[1]} is not a multiple of 64'),
    (lambda u: dict(poses_zip=u / 'sample.zip', options=dict(steps=2.5)), 'steps is 2.5; expected a whole number'),
], ids=['zip-slip', 'absolute-entry', 'symlink-entry', 'not-a-zip', 'no-poses', 'no-embedding',
        'reference-not-an-image', 'outside-uploads', 'both', 'neither', 'video-without-models', 'bad-steps',
        'bad-size', 'fractional-steps'])
def test_bad_uploads_are_one_line_errors(model, uploads, tmp_path, make, message):
  folder = tmp_path / 'uploads'
  shutil.copytree(uploads, folder)
  request = {'reference': folder / 'reference.png', 'options': OPTIONS, **make(folder)}
  work = tmp_path / 'request'
  work.mkdir()
  with pytest.raises(ValueError, match=message) as error:
    serve.handle(model, work, uploads=folder, **request)
  assert '\n' not in str(error.value) and str(tmp_path) not in str(error.value)
  assert not (tmp_path / 'evil.png').exists() and not Path('/tmp/evil.png').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['request', 'uploads'], 'written outside its folder'


def _bytes(path, data) -> Path:
  path.write_bytes(data)
  return path


@pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')
def test_driving_video_runs_the_prep_steps(model, tmp_path):
  """A video through sa-prep's steps (the tiny stand-in models of tests/prep), at the sample's size
  and frame count: the same compiled program."""
  (tmp_path / 'DWPose').mkdir()
  onnx.save(synthetic_models.yolox_detector(), tmp_path / 'DWPose' / 'yolox_l.onnx')
  onnx.save(synthetic_models.simcc_pose_model(), tmp_path / 'DWPose' / 'dw-ll_ucoco_384.onnx')
  antelope = tmp_path / 'insightface' / 'models' / 'antelopev2'
  antelope.mkdir(parents=True)
  onnx.save(synthetic_models.scrfd_detector(), antelope / 'scrfd_10g_bnkps.onnx')
  onnx.save(synthetic_models.arcface_recogniser(), antelope / 'glintr100.onnx')
  uploads = tmp_path / 'uploads'
  uploads.mkdir()
  Image.fromarray(np.full((SIZE[1], SIZE[0], 3), RED, np.uint8)).save(uploads / 'photo.png')
  # as many frames as the sample's: the same compiled program
  write_video(uploads / 'drive.mp4', (VIDEO_COLOURS * FRAMES)[:FRAMES], size=SIZE)
  with_models = serve.Model(model.params, model.config, model.run, tmp_path / 'DWPose', tmp_path / 'insightface')
  work = tmp_path / 'request'
  work.mkdir()
  result = serve.handle(with_models, work, uploads / 'photo.png', video=uploads / 'drive.mp4', options=OPTIONS,
                        uploads=uploads)
  assert _video(result.video) == (FRAMES, SIZE)
  assert {p.name for p in (work / 'case' / 'poses').iterdir()} == {f'frame_{i}.png' for i in range(FRAMES)}


@pytest.mark.parametrize('argv, message', [
    (['--dwpose-dir', 'DWPose'], '--dwpose-dir needs --insightface-root too'),
    (['--port', '0'], '--port 0: expected 1..65535'),
    (['--config.sampler.num_step=3'], 'num_step'),
    (['--steps', '3'], 'unrecognized arguments: --steps 3'),
])
def test_flags_are_checked_before_loading(argv, message, capsys):
  with pytest.raises(SystemExit) as stop:
    web_tool.main(argv)
  assert stop.value.code == 2 and message in capsys.readouterr().err


def test_demo_settings_and_bad_settings():
  _, run = web_tool.validate([])
  assert (run.io.width, run.io.height, run.io.compile_cache) == (0, 0, False), 'sample size, per-step progress'
  _, run = web_tool.validate(['--checkpoint', 'ckpt', '--compile-cache'])
  assert (run.io.width, run.io.height, run.io.compile_cache) == (512, 512, True)
  with pytest.raises(SystemExit, match='sa-web: error: sampler.num_steps is 0; expected >= 1'):
    web_tool.main(['--config.sampler.num_steps=0'])


# --- the Gradio app, through gradio_client --------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(model, tmp_path_factory):
  """sa-web's app on a free 127.0.0.1 port, started once, with Gradio's cache in its own folder."""
  workdir = tmp_path_factory.mktemp('sa-web')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('GRADIO_TEMP_DIR', str(workdir / 'gradio'))
    patch.setenv('GRADIO_ANALYTICS_ENABLED', 'False')     # gradio_client's telemetry: off
    patch.setenv('HF_HUB_DISABLE_TELEMETRY', '1')
    from sa_jax import web
    app = web.make_app(model, workdir)
    url = web.launch(app, '127.0.0.1', _free_port())
    try:
      yield url, workdir
    finally:
      app.close()


@pytest.fixture(scope='module')
def client(server, tmp_path_factory):
  from gradio_client import Client
  return Client(server[0], verbose=False, analytics_enabled=False,
                download_files=str(tmp_path_factory.mktemp('downloads')))


def _request(client, uploads, poses='sample.zip', steps=2):
  from gradio_client import handle_file
  return client.predict(handle_file(str(uploads / 'reference.png')), handle_file(str(uploads / poses)), None,
                        0, 0, 0, steps, 3.0, 42, 16, 4, False, api_name='/animate')


def test_app_serves_requests_without_recompiling(server, client, uploads):
  assert server[0].startswith('http://127.0.0.1:')
  video, skeletons = _request(client, uploads)
  assert _video(video) == _video(skeletons) == (FRAMES, SIZE)
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(kw) if event == BACKEND_COMPILE else None
  animators = animate.make_animator.cache_info().currsize
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    video, _ = _request(client, uploads)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [], 'the second request of a size compiled'
  assert animate.make_animator.cache_info().currsize == animators
  assert _video(video) == (FRAMES, SIZE)
  assert _tree(server[1] / 'requests') == [], 'request folders left behind'


def test_app_shows_bad_uploads_as_one_line(server, client, uploads, tmp_path):
  from gradio_client.exceptions import AppError
  shutil.copyfile(uploads / 'reference.png', tmp_path / 'reference.png')
  _zip(tmp_path / 'slip.zip', {'poses/frame_0.png': POSE, '../../evil.png': POSE})
  with pytest.raises(AppError) as error:
    _request(client, tmp_path, poses='slip.zip')
  assert str(error.value).strip() == "slip.zip: entry '../../evil.png' points outside the zip's folder; refused"
  assert _tree(server[1] / 'requests') == []


# --- the page, in headless Chromium ----------------------------------------------------------------

VIDEO_PLAYS = """
const [done] = [arguments[arguments.length - 1]];
const video = document.querySelector('#result video');
video.muted = true;
video.loop = false;
video.currentTime = 0;
video.addEventListener('ended', () => done({
  duration: video.duration, played: video.currentTime, width: video.videoWidth, height: video.videoHeight,
  frames: video.getVideoPlaybackQuality().totalVideoFrames}), {once: true});
video.play().catch(error => done({error: String(error)}));
"""
WATCH_PROGRESS = """
window.progressSeen = new Set();
new MutationObserver(() => {
  for (const m of document.body.innerText.matchAll(/denoising \\d+\\/\\d+/g)) window.progressSeen.add(m[0]);
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def _browser():
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
  if not (chromium and driver):
    pytest.fail('chromium and chromedriver are not installed: run `bash tools/install_browser.sh` (the '
                "README's test command does)")
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,1100',
              '--no-first-run', '--disable-background-networking', '--disable-component-update',
              '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'):   # no host but this machine
    options.add_argument(arg)
  options.set_capability('goog:loggingPrefs', {'performance': 'ALL'})
  return webdriver.Chrome(options=options, service=Service(driver))


def test_page_animates_the_sample_in_chromium(model, server, uploads, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ready
  from selenium.webdriver.support.ui import WebDriverWait
  artifacts = Path(os.environ.get('SA_TEST_ARTIFACTS') or tmp_path)
  artifacts.mkdir(parents=True, exist_ok=True)
  browser = _browser()
  try:
    wait = WebDriverWait(browser, 60)
    browser.get(server[0])
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#reference input[type=file]'))).send_keys(
        str(uploads / 'reference.png'))
    browser.find_element(By.CSS_SELECTOR, '#poses input[type=file]').send_keys(str(uploads / 'sample.zip'))
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#reference img')))
    browser.find_element(By.XPATH, "//button[contains(., 'Options')]").click()
    steps = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '#steps input')))
    steps.clear()
    steps.send_keys('2')
    browser.execute_script(WATCH_PROGRESS)
    browser.find_element(By.ID, 'animate').click()
    WebDriverWait(browser, 600).until(lambda b: b.execute_script(
        "const v = document.querySelector('#result video'); return v && v.readyState >= 1 && v.duration > 0;"))
    played = browser.execute_async_script(VIDEO_PLAYS)
    browser.save_screenshot(str(artifacts / 'web.png'))
    seen = browser.execute_script('return [...window.progressSeen];')
    requested = [json.loads(entry['message'])['message']['params'].get('request', {}).get('url', '')
                 for entry in browser.get_log('performance')]
  finally:
    browser.quit()
  fps = model.run.conditioning.fps
  assert 'error' not in played, played
  assert (played['width'], played['height']) == SIZE
  assert played['duration'] == pytest.approx(FRAMES / fps, abs=0.5 / fps)
  assert played['played'] == pytest.approx(played['duration'], abs=0.5 / fps)
  assert played['frames'] == FRAMES
  assert seen and all(s.endswith('/2') for s in seen), f'no per-step progress shown: {seen}'
  foreign = {u for u in requested if u and not u.startswith((server[0], 'data:', 'blob:'))}
  assert not foreign, f'the page requested other hosts: {sorted(foreign)[:5]}'
