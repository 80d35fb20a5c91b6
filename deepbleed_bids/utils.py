"""Small helpers shared by interfaces."""
import re
from pathlib import Path


def out_path(cwd, in_file, tag, ext=".nii.gz"):
    """``<cwd>/<input stem>_<tag><ext>``."""
    stem = re.sub(r"\.nii(\.gz)?$|\.[^.]*$", "", Path(in_file).name)
    return str(Path(cwd) / f"{stem}_{tag}{ext}")
