"""Which series of a session to segment: soft-tissue kernels by default.

The published network was trained on soft-tissue reconstructions without
contrast (the paper's limitation section): bone kernels and contrast are
processed only when nothing else exists, and always with a warning.

The kernel classification and contrast detection are shared with dicom2bids,
which writes ``KernelType`` into the sidecars (no pydicom needed here).
"""
import re

_GE_SOFT = {"SOFT", "STANDARD", "STND", "STD", "STD+", "SMOOTH"}
_GE_BONE = {"BONE", "BONEPLUS", "BONE+", "LUNG", "EDGE"}
_PHILIPS_SOFT = {"A", "B", "UA", "UB", "UC", "EA", "EB", "EC"}
_PHILIPS_BONE = {"D", "E", "L", "YC", "YD", "YE", "YF"}
_SIEMENS = re.compile(r"^([A-SU-Z])[a-z]{0,2}(\d{2})[a-z]?$")  # H30s, Hr38, Br36d; T = topogram
_CANON = re.compile(r"^FC(\d{2})$")
_SOFT_WORDS = ("SOFT", "BRAIN", "STANDARD", "SMOOTH")
_BONE_WORDS = ("BONE", "LUNG", "EDGE", "SHARP")


def classify_kernel(kernel, manufacturer=None):
    """Class of a CT reconstruction kernel: ``"soft"``, ``"bone"`` or ``"unknown"``.

    Rules (intermediate kernels are "unknown" on purpose):

    * GE: SOFT, STANDARD/STND/STD, STD+, SMOOTH -> soft; BONE, BONEPLUS, LUNG,
      EDGE -> bone (an ``HD`` prefix is ignored); DETAIL, CHEST... -> unknown.
    * Siemens (letter, optional lower-case letters, two digits: H30s, Hr38, Br36,
      J30s, Qr40): sharpness < 50 -> soft, >= 60 -> bone, 50-59 -> unknown;
      T (topogram) kernels -> unknown.
    * Philips (only when the manufacturer says Philips, the letters are too
      short to guess): A, B, UA, UB, UC, EA, EB, EC -> soft; D, E, L, YC-YF -> bone.
    * Canon/Toshiba FCnn: FC20-FC26 (head) -> soft, FC30 and above -> bone,
      other body kernels -> unknown.
    * Any other name: containing SOFT/BRAIN/STANDARD/SMOOTH -> soft,
      BONE/LUNG/EDGE/SHARP -> bone, both or neither -> unknown.
    """
    if isinstance(kernel, (list, tuple)):
        kernel = kernel[0] if kernel else ""
    text = str(kernel or "").strip()
    if not text:
        return "unknown"
    first = re.split(r"[\\\s,]+", text)[0]  # Siemens may add the iterative strength: "Hr38\3"
    name = re.sub(r"^HD[\s_]+", "", text.upper()).strip()
    if name in _GE_SOFT:
        return "soft"
    if name in _GE_BONE:
        return "bone"
    if "PHILIPS" in str(manufacturer or "").upper():
        if name in _PHILIPS_SOFT:
            return "soft"
        if name in _PHILIPS_BONE:
            return "bone"
    match = _SIEMENS.match(first)
    if match:
        sharpness = int(match.group(2))
        return "soft" if sharpness < 50 else "bone" if sharpness >= 60 else "unknown"
    match = _CANON.match(first.upper())
    if match:
        number = int(match.group(1))
        return "soft" if 20 <= number <= 26 else "bone" if number >= 30 else "unknown"
    soft = any(word in name for word in _SOFT_WORDS)
    bone = any(word in name for word in _BONE_WORDS)
    return "soft" if soft and not bone else "bone" if bone and not soft else "unknown"


def is_soft_tissue(sidecar):
    """True when a CT sidecar describes a soft-tissue (brain) kernel reconstruction."""
    kind = sidecar.get("KernelType")
    if kind not in ("soft", "bone", "unknown"):
        kind = classify_kernel(sidecar.get("ConvolutionKernel"), sidecar.get("Manufacturer"))
    return kind == "soft"


_NO_WORDS = {"", "NONE", "NO", "N", "N/A", "NA", "NIL", "-", "0", "NON", "NOT APPLICABLE"}
_CONTRAST_TEXT = re.compile(
    r"CONTRAST|\bC\+|\+C\b|\bCTA\b|\bCTV\b|\bCTP\b|ANGIO|PERFUSION|VENOGRA|\bW/? ?CON\b|\bWITH CON", re.I)
_NO_CONTRAST_TEXT = re.compile(r"\b(NON|NO|W/O|WO|WITHOUT)[\s_-]*(IV[\s_-]*)?(CON|CONTRAST|C\+)|\bC-(?!\w)", re.I)


def contrast_suspected(sidecar):
    """True when a CT sidecar suggests iodinated contrast.

    Evidence: a ContrastBolusAgent/Ingredient other than "none", a positive
    ContrastBolusVolume, or a series/protocol/study description naming contrast,
    CTA, CTV, perfusion or C+ (unless it says non-contrast, w/o contrast, C-).
    """
    for key in ("ContrastBolusAgent", "ContrastBolusIngredient"):
        value = str(sidecar.get(key) or "").strip().upper()
        if value not in _NO_WORDS:
            return True
    try:
        if float(sidecar.get("ContrastBolusVolume") or 0) > 0:
            return True
    except (TypeError, ValueError):
        pass
    for key in ("SeriesDescription", "ProtocolName", "StudyDescription"):
        text = str(sidecar.get(key) or "")
        if _CONTRAST_TEXT.search(text) and not _NO_CONTRAST_TEXT.search(text):
            return True
    return False


def kernel_type(metadata, entities=None):
    """'soft', 'bone' or 'unknown' from a sidecar (KernelType, else ConvolutionKernel),
    else from the file name's ``rec-``/``acq-`` label (``acq-bone``, ``rec-soft``)."""
    if metadata.get("KernelType") in ("soft", "bone"):
        return metadata["KernelType"]
    kernel = metadata.get("ConvolutionKernel")
    if kernel:
        return classify_kernel(kernel, metadata.get("Manufacturer", ""))
    for key in ("reconstruction", "acquisition"):
        kind = classify_kernel((entities or {}).get(key) or "", metadata.get("Manufacturer", ""))
        if kind != "unknown":
            return kind
    return "unknown"


def _kernel_source(metadata, entities):
    """What the kernel class was read from, for the warning."""
    if metadata.get("ConvolutionKernel"):
        return f"ConvolutionKernel {metadata['ConvolutionKernel']}"
    if metadata.get("KernelType") in ("soft", "bone"):
        return f"KernelType {metadata['KernelType']}"
    for key, prefix in (("reconstruction", "rec"), ("acquisition", "acq")):
        if classify_kernel(entities.get(key) or "", metadata.get("Manufacturer", "")) != "unknown":
            return f"file name label {prefix}-{entities[key]}"
    return "unknown source"


def select_series(images, policy="soft"):
    """Drop bone-kernel series when their session has a soft-tissue one (policy 'soft').

    The kernel comes from the sidecar (KernelType, ConvolutionKernel) or, when the
    sidecar names none, from the ``rec-``/``acq-`` label. Returns (kept, skipped)
    where skipped holds (relpath, reason); kept images get a 'warnings' list for
    the sidecars.
    """
    sessions = {}
    for img in images:
        img.setdefault("warnings", [])
        meta = img.get("metadata", {})
        ents = img["entities"]
        img["kernel_type"] = kernel_type(meta, ents)
        if img["kernel_type"] == "bone":
            img["warnings"].append(
                f"bone reconstruction kernel ({_kernel_source(meta, ents)}): the network "
                "was trained on soft-tissue kernels; volumes may be unreliable")
        if contrast_suspected(meta):
            img["warnings"].append("contrast agent suspected: the network was trained on non-contrast CT")
        sessions.setdefault((ents.get("subject"), ents.get("session")), []).append(img)
    kept, skipped = [], []
    for group in sessions.values():
        has_soft = any(i["kernel_type"] != "bone" for i in group)
        for img in group:
            if policy == "soft" and has_soft and img["kernel_type"] == "bone":
                skipped.append((img["relpath"], "bone kernel; this session has a soft-tissue series "
                                                "(use --kernels all to process it too)"))
            else:
                kept.append(img)
    return kept, skipped
