"""The README's two commands are the project's entry points; CI runs exactly the second."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
  lines = (ROOT / 'README.md').read_text().splitlines()
  start = lines.index('```bash')
  return lines[start + 1], lines[start + 2]


def test_ci_runs_the_readme_test_command():
  animate, test = _readme_commands()
  assert 'sa-animate' in animate and 'pytest' in test
  assert test in (ROOT / '.ci' / 'run').read_text().splitlines()
