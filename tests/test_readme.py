"""The README opens with the two commands (CI runs its test command), says they need nothing
outside the package, gives their measured times, and its license table covers every bundled
third-party file."""
import re
from pathlib import Path

from deepbleed_bids import assets

TOP = Path(__file__).resolve().parent.parent
README = (TOP / "README.md").read_text()
INTRO = README[:README.index("\n## ")]


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "deepbleed-bids example" in blocks[0]
    test_cmd = re.search(r"\.venv/bin/(python -m pytest[^\n]*)", blocks[1]).group(1)
    assert test_cmd in (TOP / ".ci" / "run").read_text()


def test_the_two_commands_need_nothing_outside_the_package_and_have_measured_times():
    before_example = INTRO[:INTRO.index("```bash")]
    assert "ships inside the package" in before_example and "download" not in before_example.lower()
    assert "sub-example.html" in before_example and "volumes.tsv" in before_example  # what it prints
    times = INTRO[INTRO.rindex("```"):]
    assert len(re.findall(r"\d+(?:\.\d+)? min", times)) >= 3, "measured times of both commands"
    assert "no `../shared`" in times


def test_license_table_names_every_bundled_third_party_file():
    section = README[README.index("## Citation and licenses"):]
    shipped = {p.relative_to(assets.DATA).as_posix() for p in assets.DATA.rglob("*")
               if p.is_file() and "models" not in p.parts and "__pycache__" not in p.parts}
    bundled = {a["path"] for a in (assets.TEMPLATE, assets.EXAMPLE_CT)}
    licenses = {a["license_file"] for a in (assets.TEMPLATE, assets.EXAMPLE_CT)}
    assert shipped == bundled | licenses, "only the template and the example archive (and their licenses)"
    for asset, name in ((assets.TEMPLATE, "CC BY-NC-ND 4.0"), (assets.EXAMPLE_CT, "BSD-2-Clause")):
        row = next(line for line in section.splitlines() if f"deepbleed_bids/data/{asset['path']}" in line)
        assert name in row and Path(asset["license_file"]).name in row
