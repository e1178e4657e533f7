"""sa_jax.training.metrics: JSON lines and TensorBoard events, truncation on resume, disabled writers."""

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from sa_jax.training import metrics


def _events(workdir):
  """Every event of the TensorBoard files, in file order (TFRecord: length, crc, data, crc)."""
  out = []
  for path in sorted((workdir / metrics.TENSORBOARD).iterdir()):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      out.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return out


def _scalars(events):
  """(tag, step, value) of the scalar events, hiding those a SessionLog.START purges (as TensorBoard)."""
  seen = []
  for e in events:
    if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START:
      seen = [s for s in seen if s[1] < e.step]
    for v in e.summary.value:
      seen.append((v.tag, e.step, v.simple_value))
  return seen


def _lines(workdir):
  return [json.loads(line) for line in (workdir / metrics.JSONL).read_text().splitlines()]


def test_writes_jsonl_and_tensorboard(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    writer.write_scalars(0, {'loss': jnp.float32(0.5), 'lr': np.float64(1e-4)})
    writer.write_scalars(jnp.int32(1), {'loss': jnp.array([0.25])[0]})
    assert _lines(tmp_path)[-1] == {'step': 1, 'loss': 0.25}, 'flushed at every write'
    writer.write_video(1, 'sample', np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"'sample' is float32\[2, 4, 4\]"):
      writer.write_video(1, 'sample', np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"'loss' has shape \(2,\)"):
      writer.write_scalars(2, {'loss': np.zeros(2)})
  assert _lines(tmp_path) == [{'step': 0, 'loss': 0.5, 'lr': 1e-4}, {'step': 1, 'loss': 0.25}]
  assert _scalars(_events(tmp_path)) == [('loss', 0, 0.5), ('lr', 0, pytest.approx(1e-4)), ('loss', 1, 0.25)]
  with pytest.raises(ValueError, match='closed'):
    writer.write_scalars(3, {'loss': 1.0})


def test_truncate_after_on_resume(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    for step in range(5):
      writer.write_scalars(step, {'loss': float(step)})
  (tmp_path / metrics.JSONL).open('a').write('{"step": 5, "lo')  # a killed run's half line

  with metrics.MetricWriter(tmp_path) as writer:
    writer.truncate_after(2)
    assert [r['step'] for r in _lines(tmp_path)] == [0, 1, 2]
    writer.write_scalars(3, {'loss': 30.0})
  assert _lines(tmp_path) == [{'step': s, 'loss': float(s)} for s in range(3)] + [{'step': 3, 'loss': 30.0}]
  assert [p.name for p in tmp_path.iterdir() if p.name.endswith('.tmp')] == []
  assert _scalars(_events(tmp_path)) == [('loss', s, float(s)) for s in range(3)] + [('loss', 3, 30.0)]


def test_disabled_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  with metrics.MetricWriter(workdir, enabled=False) as writer:
    writer.write_scalars(0, {'loss': 1.0})
    writer.write_video(0, 'sample', np.zeros((1, 2, 2, 3), np.uint8))
    writer.truncate_after(0)
    writer.flush()
  assert not workdir.exists()


def test_log_progress_logs_each_tenth_and_the_last_step(caplog):
  caplog.set_level('INFO', logger=metrics.logger.name)
  for done in range(1, 26):
    metrics.log_progress('VAE', done, 25, {'l1': jnp.float32(0.5), 'kl': 2})
  assert [r.getMessage() for r in caplog.records] == [f'VAE: step {i}/25, l1 0.5, kl 2' for i in [*range(2, 25, 2), 25]]
  with pytest.raises(ValueError, match="metric 'l1' has shape"):
    metrics.log_progress('VAE', 25, 25, {'l1': np.zeros(2)})
