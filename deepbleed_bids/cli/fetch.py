"""``deepbleed-bids fetch weights|template|example|all``: get assets ahead of time.

``weights``: downloads the published DeepBleed weights (pinned URL) into the asset cache
($DEEPBLEED_HOME, or --home) so that later runs need no network: at container build
time, on an HPC login node before jobs start on compute nodes without internet access,
or on a machine whose copy is then moved to an air-gapped site. They have no published
sha256: give --weights-sha256 to pin them, otherwise the digest of the downloaded file
is recorded. They are unpacked into the cache and loaded into the network once, so a
broken download fails here, not in a job. Prints `sha256  path` lines (paths relative
to the cache) and keeps them in <cache>/SHA256SUMS, which `sha256sum -c SHA256SUMS`
checks from inside the cache.

``template`` and ``example``: the DeepBleed template and the example head CT ship inside
the package, so nothing is downloaded; their pinned sha256 is checked (as on every use)
and `sha256  path` is printed with the bundled file's full path and its license.
"""
import argparse
import os
import sys
from pathlib import Path

from ..utils import write_text_atomic

ASSETS = ("template", "weights", "example")
BUNDLED = ("template", "example")
SUMS = "SHA256SUMS"
CC_BY_NC_ND = "https://creativecommons.org/licenses/by-nc-nd/4.0/"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "fetch", help="download the published weights into the asset cache; verify the bundled template and example",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assets", nargs="+", choices=[*ASSETS, "all"], metavar="ASSET",
                        help="weights (downloaded), template or example (bundled: verified), or all")
    parser.add_argument("--home", type=Path, metavar="DIR",
                        help="the asset cache to fill (default: $DEEPBLEED_HOME, else the per-user cache)")
    parser.add_argument("--weights-sha256", metavar="HEX", default="",
                        help="refuse published weights whose sha256 differs")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not load the weights into the network after downloading them")
    parser.set_defaults(func=run)
    return parser


def _sha256(path):
    import pooch  # hashes without importing TensorFlow

    return pooch.file_hash(str(path))


def _bundled(name):
    """Check a bundled asset's sha256 (raises AssetError); print where it is and its license."""
    from .. import assets

    asset = {"template": assets.TEMPLATE, "example": assets.EXAMPLE_CT}[name]
    path = assets.bundled(asset)
    print(f"{asset['sha256']}  {path}")
    print(f"deepbleed-bids fetch: {name} is bundled with the package, nothing to download; sha256 verified. "
          f"License: {asset['license']} ({assets.DATA / asset['license_file']}).", file=sys.stderr)


def _weights(sha256, verify):
    from .. import assets
    from ..errors import AssetError

    path = assets.fetch_published_weights(sha256=sha256 or None)
    from ..model.zoo import DEFAULT_MODEL, load_model, resolve_model  # imports TensorFlow

    spec = resolve_model(DEFAULT_MODEL)  # unpacks into the cache (models/extracted/)
    if verify:
        try:
            load_model(spec, input_shape=(16, 16, 16, 1))
        except Exception as err:  # noqa: BLE001 - TF and h5 errors come in many types
            raise AssetError(f"the published weights at {path} do not load into the DeepBleed VNet "
                             f"({err}); delete {path} and fetch them again.") from err
    return [(path, _sha256(path))], f"{assets.PUBLISHED_WEIGHTS['license']} ({CC_BY_NC_ND})"


def _record(home, entries):
    """Merge ``sha256  relpath`` lines into <home>/SHA256SUMS (atomic); False when read-only."""
    sums = home / SUMS
    known = {}
    if sums.is_file():
        for line in sums.read_text().splitlines():
            sha, _, rel = line.partition("  ")
            if rel:
                known[rel] = sha
    known.update(entries)
    text = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(known.items()))
    try:
        write_text_atomic(text, sums)
    except OSError:  # a read-only cache: nothing to record
        return False
    return True


def run(args):
    from .. import assets
    from ..errors import AssetError
    from ..execution import runtime_environment

    wanted = list(ASSETS) if "all" in args.assets else [a for a in ASSETS if a in args.assets]
    for name in wanted:
        if name in BUNDLED:
            _bundled(name)
    if "weights" not in wanted:
        return 0
    saved_home = os.environ.get("DEEPBLEED_HOME")
    if args.home:
        os.environ["DEEPBLEED_HOME"] = str(args.home.absolute())
    try:
        with runtime_environment(None):
            home = assets.home()
            try:
                home.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise AssetError(f"cannot create the asset cache {home} ({err.strerror}); "
                                 "set DEEPBLEED_HOME or --home to a writable folder.") from err
            files, license_ = _weights(args.weights_sha256, not args.no_verify)
            entries = {}
            for path, sha in files:
                rel = Path(path).resolve().relative_to(home.resolve()).as_posix()
                entries[rel] = sha
                print(f"{sha}  {rel}")
            print(f"deepbleed-bids fetch: weights in {home}; license: {license_}", file=sys.stderr)
            if not _record(home, entries):
                print(f"deepbleed-bids fetch: {home} is read-only; {SUMS} not updated", file=sys.stderr)
    finally:
        if args.home:
            if saved_home is None:
                os.environ.pop("DEEPBLEED_HOME", None)
            else:
                os.environ["DEEPBLEED_HOME"] = saved_home
    return 0
