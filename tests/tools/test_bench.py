"""`python -m tools.bench`: the fastest path prints a table with a ratio column, the JSON report,
and the end-to-end comparison's parts (a process measured alone, both sides given the same case,
the original's attention stand-in); the original itself is not in CI (no checkout there).

Timings are printed, never asserted (they belong to the benchmark suite, not to tests).
"""

import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from sa_jax import animate, checkpoint, diffusion
from tests import micro_model
from tools import animate as animate_tool
from tools import bench, bench_original, original


def test_sampler_benchmark_prints_a_ratio_table(capsys):
  bench.main(['sampler', '--steps', '2', '--repeats', '1'])
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if line.startswith('variant'))
  assert 'ratio' in header
  rows = [line for line in out.splitlines() if line.startswith(('Python loop', 'one lax.scan'))]
  assert len(rows) == 2
  assert re.search(r'\s1\.000$', rows[0]), 'the baseline row has ratio 1'
  assert re.search(r'\s\d+\.\d{3}$', rows[1])
  diff, scale = map(float, re.search(r'max \|diff\| (\S+) \(max \|latents\| (\S+)\)', out).groups())
  assert diff <= 1e-6 * scale, 'the loop baseline must compute what the scan computes'


def test_unknown_benchmark_is_refused():
  with pytest.raises(SystemExit):
    bench.main(['nonsense'])


def test_train_memory_variants_are_typed_overrides_of_the_release_settings(capsys):
  config = bench._train_config('mesh.shape=fsdp=4,context=2;dtype=bfloat16;lora.rank=8;remat=False;data.width=576')
  assert (config.mesh.shape, config.dtype, config.lora.rank, config.remat, config.data.width) == (
      'fsdp=4,context=2', 'bfloat16', 8, False, 576)
  assert config.data.height == 512 and config.query_chunk_size == 1024, 'the rest stays the release'
  # A mesh larger than the devices at hand is reported in its row, and nothing is compiled.
  bench.main(['train_memory', '--train-variants', 'mesh.shape=fsdp=1024'])
  assert 'needs 1024 devices' in capsys.readouterr().out


def test_flops_are_xlas_count_of_the_compiled_program():
  a, b = jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 4), jnp.float32)
  compiled, _ = bench._compile(jax.jit(jnp.matmul), a, b)
  assert bench._flops(compiled) == 2 * 8 * 16 * 4


def test_production_figures_come_from_the_animators_programs(monkeypatch, capsys):
  """The production benchmark at a micro scale: FLOPs per video from loop-free pieces (HJB's
  included), and the sampler program's memory on one device and on the mesh of all (8 here),
  compiled from shapes (without HJB: its sampler takes 40 s to compile even at this size)."""
  config = checkpoint.CheckpointConfig(models=micro_model.micro_models(face_embedder=True),
                                       scheduler=diffusion.ScheduleConfig())
  monkeypatch.setattr(bench, 'production_config', lambda: config)
  monkeypatch.setattr(bench, 'PRODUCTION', dict(height=64, width=128, steps=2, dtype=jnp.float32,
                                                query_chunk_size=None))
  cache_dir = jax.config.jax_compilation_cache_dir
  bench.main(['production', '--production-frames', '6', '--production-hjb', 'off'])
  assert jax.config.jax_compilation_cache_dir == cache_dir, 'its temporary cache is not left behind'
  out = capsys.readouterr().out
  flops = bench.REPORT['production_flops'][6]
  assert flops['steps'] == 2 * flops['step'] > 0 and flops['prepare'] > 0 and flops['decode'] > 0
  refine_steps, chunks = 2, 2                    # steps 0-1 of 2 (hjb.end is beyond), 6 frames in chunks of 4
  assert flops['hjb'] > 0 and flops['hjb'] % (refine_steps * 3 * chunks) == 0
  rows = [line.split() for line in out.splitlines() if re.match(r'[18]\s+6\s+o', line)]
  assert [(r[0], r[2]) for r in rows] == [('1', 'off'), ('8', 'off')]
  one, eight = rows
  assert float(eight[3]) < float(one[3]), 'eight devices split the UNet rows'
  assert float(one[6]) > 0 and eight[6] == 'n/a', 'one device: a later process compiles from the stored programs'


def test_component_commands_give_both_sides_the_same_work():
  configs = bench_original.release_configs()
  assert configs['unet']['block_out_channels'] == [320, 640, 1280, 1280]
  assert configs['vae_decode']['block_out_channels'] == [128, 256, 512, 512]
  assert configs['iresnet'] == {'layers': [3, 13, 30, 3], 'num_features': 512}
  for task in bench_original.COMPONENTS:
    ours, theirs = bench_original.component_commands(task, Path('checkout'), Path('python'), 4, 32, 3)
    assert ours[1:4] == ['-m', 'tools.bench_original', task]
    parsed = original.parser().parse_args(theirs[2:])
    assert parsed.task == task and parsed.repeats == 3
    assert (parsed.batch if task == 'iresnet' else (parsed.frames, parsed.latent_size)) == (
        4 if task == 'iresnet' else (4, 32))
    config = {'unet': 'unet_config', 'vae_decode': 'vae_config', 'iresnet': 'iresnet_config'}[task]
    assert json.loads(getattr(parsed, config)) == configs[task]


def test_json_report_holds_the_tables_and_replaces_only_a_report(tmp_path, capsys):
  args = ['train_memory', '--train-variants', 'mesh.shape=fsdp=1024']          # a table without compiling
  other = tmp_path / 'notes.json'
  other.write_text('{"mine": 1}')
  with pytest.raises(FileExistsError, match='is not a tools.bench --json report'):
    bench.main(args + ['--json', str(other)])
  assert json.loads(other.read_text()) == {'mine': 1}
  report = tmp_path / 'report.json'
  for _ in range(2):                                   # the second run replaces the first's report
    bench.main(args + ['--json', str(report)])
  written = json.loads(report.read_text())
  assert written['machine'].startswith(f'jax {jax.__version__}')
  assert [t['title'].split(':')[0] for t in written['tables']] == ['train_memory']
  assert 'needs 1024 devices' in str(written['tables'][0]['rows'])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.json', 'report.json']


def test_a_process_is_measured_alone(tmp_path):
  touch = 'b = bytearray(300 * 2**20); b[::4096] = bytes(len(b[::4096])); print("big")'
  big = bench_original._measured([sys.executable, '-c', touch])
  small = bench_original._measured([sys.executable, '-c', 'print("small")'])
  assert (big['last_line'], small['last_line']) == ('big', 'small')
  # Each its own peak, not this (larger) test process's, whose pages a forked child shares until exec.
  assert big['rss_mib'] > 300 and small['rss_mib'] < 100 and big['wall_s'] > 0
  with pytest.raises(RuntimeError, match='failed .1.: boom'):
    bench_original._measured([sys.executable, '-c', 'import sys; sys.exit("boom")'])


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  folder = tmp_path_factory.mktemp('bench') / 'ckpt'
  checkpoint.save(folder, *animate.tiny_model())
  return folder


@pytest.mark.parametrize('case', bench_original.CASES, ids=lambda c: c.name.split(',')[0] + ('-hjb' if c.hjb else ''))
def test_both_sides_run_the_same_case(case, tiny_checkpoint, tmp_path):
  inputs = bench_original.write_inputs(case, tmp_path / 'inputs')
  ours = bench_original.ours_command(case, tiny_checkpoint, inputs, tmp_path / 'out.mp4', tmp_path / 'cache')
  assert ours[1:3] == ['-m', 'tools.animate']
  job = animate_tool.validate(ours[3:])                 # sa-animate's own checks: options, inputs, outputs
  sampling, hjb = job.run.sampler, job.run.hjb
  assert job.requests[0].poses.shape[:3] == (case.frames, case.height, case.width)
  assert (sampling.num_steps, sampling.guidance, sampling.tile_size, sampling.tile_overlap) == (
      case.steps, case.guidance, case.tile_size, case.tile_overlap)
  assert hjb.enabled == bool(case.hjb) and job.run.io.compile_cache_dir == str(tmp_path / 'cache')
  theirs = original.parser().parse_args(
      bench_original.original_command(case, Path('python'), Path('checkout'), Path('weights'), inputs)[2:])
  assert theirs.task == 'pipeline'
  assert (theirs.width, theirs.height, theirs.steps, theirs.guidance, theirs.tile_size, theirs.tile_overlap) == (
      case.width, case.height, case.steps, case.guidance, case.tile_size, case.tile_overlap)
  if case.hjb:
    assert (hjb.start, hjb.end, hjb.iterations) == (theirs.hjb_start, theirs.hjb_end, theirs.hjb_iterations) == case.hjb
  else:
    assert theirs.hjb_start > case.steps, 'the original refines only from hjb_start on'


@pytest.mark.parametrize('shape', [(2, 5, 8), (2, 5, 3, 8)], ids=['BMK', 'BMHK'])
def test_the_originals_xformers_stand_in_is_softmax_attention(shape):
  import torch
  q, k, v = (torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3))
  heads_first = (lambda x: x.transpose(1, 2)) if len(shape) == 4 else (lambda x: x)
  for scale in (None, 0.5):
    logits = heads_first(q) @ heads_first(k).transpose(-1, -2) * (scale or shape[-1] ** -0.5)
    expected = heads_first(torch.softmax(logits, -1) @ heads_first(v))
    torch.testing.assert_close(original.memory_efficient_attention(q, k, v, scale=scale), expected)


def test_the_comparison_with_the_original_is_checked_first_and_skipped_without_a_checkout(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match=f'--stableanimator {tmp_path}: not a StableAnimator checkout'):
    bench.main(['sampler', 'reference', '--stableanimator', str(tmp_path)])
  (tmp_path / 'animation' / 'pipelines').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='--original-python .*nopython: no such file'):
    bench.main(['reference', '--stableanimator', str(tmp_path), '--original-python', str(tmp_path / 'nopython')])
  with pytest.raises(ValueError, match='--process-repeats must be >= 1, got 0'):
    bench.main(['reference', '--process-repeats', '0'])
  assert '## ' not in capsys.readouterr().out, 'nothing ran'
  bench._original_pipeline(bench._parser().parse_args(['reference']))
  assert 'skipped: no --stableanimator checkout given' in capsys.readouterr().out
