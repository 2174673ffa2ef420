"""Every ```python example in README.md and docs/*.md runs as written.

Each block runs in a fresh interpreter inside an empty temporary directory, so examples must be
self-contained (they generate the data and random-weight checkpoints they need).
"""
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r'^```python\n(.*?)^```', re.DOTALL | re.MULTILINE)


def _examples() -> list:
    params = []
    for doc in [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]:
        text = doc.read_text(encoding='utf-8')
        for match in FENCE.finditer(text):
            line = text.count('\n', 0, match.start()) + 1
            rel = doc.relative_to(ROOT)
            params.append(pytest.param(match.group(1), id=f'{rel}:{line}'))
    return params


def test_docs_have_examples():
    assert _examples(), 'README.md and docs/*.md should show runnable python examples'


@pytest.mark.parametrize('code', _examples())
def test_example_runs(code, tmp_path):
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
