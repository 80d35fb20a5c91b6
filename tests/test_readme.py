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
    atlas = {p for p in shipped if p.startswith("atlas/")}  # derived (registered) BLAST-CT atlas, Apache-2.0
    assert shipped == bundled | licenses | atlas, "only the template, the example archive, the atlas (and licenses)"
    assert "atlas/LICENSE-BLAST-CT.txt" in atlas
    row = next(line for line in section.splitlines() if "deepbleed_bids/data/atlas/" in line)
    assert "Apache-2.0" in row and "LICENSE-BLAST-CT.txt" in row
    for asset, name in ((assets.TEMPLATE, "CC BY-NC-ND 4.0"), (assets.EXAMPLE_CT, "BSD-2-Clause")):
        row = next(line for line in section.splitlines() if f"deepbleed_bids/data/{asset['path']}" in line)
        assert name in row and Path(asset["license_file"]).name in row


PLUGIN = '''
import json, os

def pytest_collection_modifyitems(session, config, items):
    out = {item.nodeid: "data_dir" in item.fixturenames
           or any(m.args and m.args[0] for m in item.iter_markers("skipif"))
           or any(True for _ in item.iter_markers("skip")) for item in items}
    with open(os.environ["SKIP_REPORT"], "w") as f:
        json.dump(out, f)
'''


def test_a_fresh_clone_without_shared_data_runs_at_least_85_percent(tmp_path):
    """Collected as on a fresh clone (no shared data): which tests would skip, by fixture or mark."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "skipreport.py").write_text(PLUGIN)
    env = {**os.environ, "DEEPBLEED_TEST_DATA": str(tmp_path / "absent"), "SKIP_REPORT": str(tmp_path / "r.json"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TOP), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "-p", "skipreport", str(TOP / "tests")], cwd=TOP, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    skips = json.loads((tmp_path / "r.json").read_text())
    ran = [n for n, skipped in skips.items() if not skipped]
    assert len(ran) >= 0.85 * len(skips), f"{len(ran)} of {len(skips)}"
    for module in ("participant", "demo_model", "registration", "brain", "synth", "synthdata", "train", "example"):
        skipped = [n for n, s in skips.items() if n.startswith(f"tests/test_{module}.py::") and s]
        assert not skipped, f"need shared data: {skipped}"
