#!/usr/bin/env python3
"""BIDS-App entry point: ``run.py bids_dir output_dir {participant,group} [options]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deepbleed_bids.cli.main import quick_exit  # noqa: E402
from deepbleed_bids.cli.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(quick_exit(main()))
