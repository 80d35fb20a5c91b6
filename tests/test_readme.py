"""CI runs the README's test command; the README opens with the two commands."""
import re
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (TOP / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert "deepbleed-bids example" in blocks[0]
    test_cmd = re.search(r"\.venv/bin/(python -m pytest[^\n]*)", blocks[1]).group(1)
    assert test_cmd in (TOP / ".ci" / "run").read_text()
