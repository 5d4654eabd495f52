"""The README's commands and code are what a new user runs: keep them working."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_install_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert 'pip install -e ".[dev]"' in first_block[0] and "python -m lpft.vision.run --method lpft" in first_block[0]
    assert "pytest" in first_block[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "python -m pytest -q" in ci


def test_readme_python_example_runs_and_shows_the_lpft_story():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    ood = {line.split()[0]: float(line.split()[-1]) for line in out.stdout.strip().splitlines()}
    # FT distorts features (large OOD error); LP and LP-FT keep it O(eps^2)
    assert ood["FT"] > 100 * ood["LP-FT"] and ood["FT"] > 100 * ood["LP"]
