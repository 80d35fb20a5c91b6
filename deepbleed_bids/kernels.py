"""Which series of a session to segment: soft-tissue kernels by default.

The published network was trained on soft-tissue reconstructions without
contrast (the paper's limitation section): bone kernels and contrast are
processed only when nothing else exists, and always with a warning.
"""


def kernel_type(metadata):
    """'soft', 'bone' or 'unknown' from a sidecar (KernelType, else ConvolutionKernel)."""
    if metadata.get("KernelType") in ("soft", "bone"):
        return metadata["KernelType"]
    kernel = metadata.get("ConvolutionKernel")
    if not kernel:
        return "unknown"
    from .dicom import classify_kernel

    return classify_kernel(kernel, metadata.get("Manufacturer", ""))


def _contrast(metadata):
    from .dicom import contrast_suspected

    return contrast_suspected(metadata)


def select_series(images, policy="soft"):
    """Drop bone-kernel series when their session has a soft-tissue one (policy 'soft').

    Returns (kept, skipped) where skipped holds (relpath, reason); kept images
    get a 'warnings' list for the sidecars.
    """
    sessions = {}
    for img in images:
        img.setdefault("warnings", [])
        meta = img.get("metadata", {})
        img["kernel_type"] = kernel_type(meta)
        if img["kernel_type"] == "bone":
            img["warnings"].append(
                f"bone reconstruction kernel ({meta.get('ConvolutionKernel', 'acq label')}): the network "
                "was trained on soft-tissue kernels; volumes may be unreliable")
        if _contrast(meta):
            img["warnings"].append("contrast agent suspected: the network was trained on non-contrast CT")
        ents = img["entities"]
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
