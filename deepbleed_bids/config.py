"""The one configuration object of a run, filled by the command line.

It is plain data (JSON-serialisable), so nipype nodes receive it as a dict and
every output records it as provenance.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

MASK_METHODS = ("probability", "deepbleed")


@dataclass
class Config:
    bids_dir: str
    output_dir: str
    analysis_level: str = "participant"
    participant_label: list = field(default_factory=list)
    session_label: list = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    work_dir: str = ""
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float = 0.0
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    device: str = "auto"
    mixed_precision: bool = False
    model: str = "deepbleed-mistie2"
    template: str = ""  # empty: the pinned DeepBleed template from the asset cache
    brain_extraction: str = "native"
    skull_stripped: bool = False  # True: inputs are already brain-extracted or windowed (else detected)
    mask_method: str = "probability"  # native-space threshold of the warped probability map
    threshold: float = 0.5
    kernels: str = "soft"  # "soft": skip bone-kernel series when a soft-tissue one exists
    seed: int = 1
    tta: str = "auto"  # test-time augmentation: auto (flip on GPU, none on CPU), none, flip, flip+mc
    verbose: int = 0
    group_by: list = field(default_factory=list)
    reference_masks: str = ""
    expansion_ml: float = 6.0  # hematoma expansion: growth > 6 mL or > 33 %
    expansion_pct: float = 33.0
    post_treatment_sessions: list = field(default_factory=list)  # else sessions.tsv "post_treatment"
    qc_thresholds: dict = field(default_factory=dict)  # overrides of deepbleed_bids.qc.THRESHOLDS
    # filled in once assets are resolved
    template_sha256: str = ""
    model_spec: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)

    def parameters(self):
        """What decides the numbers in the outputs (recorded in every sidecar)."""
        keys = ("brain_extraction", "skull_stripped", "mask_method", "threshold", "seed", "device",
                "mixed_precision", "kernels", "bids_filters", "tta")
        return {k: getattr(self, k) for k in keys}

    @property
    def out(self):
        return Path(self.output_dir)
