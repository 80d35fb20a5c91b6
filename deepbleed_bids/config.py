"""The one configuration object of a run, filled by the command line.

It is plain data (JSON-serialisable), so nipype nodes receive it as a dict and
every output records it as provenance.
"""
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

MASK_METHODS = ("probability", "deepbleed")
# What decides the numbers in the outputs: recorded in every sidecar's "Parameters"
PARAMETERS = ("brain_extraction", "skull_stripped", "mask_method", "threshold", "seed", "device",
              "mixed_precision", "kernels")


def parameters(config):
    """:data:`PARAMETERS` of a :class:`Config` or of its dict (as nipype nodes receive it)."""
    data = config if isinstance(config, dict) else asdict(config)
    # a dict from an older run's config may lack a newer key: the default then decided it
    defaults = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
    return {k: data.get(k, defaults.get(k)) for k in PARAMETERS}


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
    mixed_precision: bool = False  # older switch, kept as an alias of precision="fp16"
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (deepbleed_bids.model.device)
    model: str = "deepbleed-mistie2"
    template: str = ""  # empty: the pinned DeepBleed template from the asset cache
    brain_extraction: str = "native"
    skull_stripped: bool = False  # True: inputs are already brain-extracted or windowed (else detected)
    mask_method: str = "probability"  # native-space threshold of the warped probability map
    threshold: float = 0.5
    kernels: str = "soft"  # "soft": skip bone-kernel series when a soft-tissue one exists
    seed: int = 1
    tta: str = "auto"  # test-time augmentation: auto (flip on GPU, none on CPU), none, flip, flip+mc, [flip+[mc+]]hu
    verbose: int = 0
    group_by: list = field(default_factory=list)
    reference_masks: str = ""
    expansion_ml: float = 6.0  # hematoma expansion: growth > 6 mL or > 33 %
    expansion_pct: float = 33.0
    post_treatment_sessions: list = field(default_factory=list)  # else sessions.tsv "post_treatment"
    qc_thresholds: dict = field(default_factory=dict)  # overrides of deepbleed_bids.qc.THRESHOLDS
    dicom_output: bool = None  # None: when dicom2bids recorded the source series
    dicom_deidentify: bool = False  # leave patient/study identifiers out of the DICOM outputs
    # fMRIPrep-style run options (see cli/parser.py)
    skip_bids_validation: bool = False
    notrack: bool = False  # nothing is ever sent anywhere: accepted for compatibility
    stop_on_first_crash: bool = False
    write_graph: bool = False
    resource_monitor: bool = False
    clean_workdir: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    config_file: str = ""
    run_id: str = ""  # <date>-<time>_<random>: names this run's log folders
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
        return parameters(self)

    @property
    def out(self):
        return Path(self.output_dir)


@dataclass
class TrainConfig:
    """``deepbleed-bids train``: the data, preprocessing and run options (the network and
    recipe are :class:`deepbleed_bids.training.loop.TrainParams`)."""
    bids_dir: str
    masks_dir: str
    output_dir: str
    name: str = "model"
    work_dir: str = ""  # empty: OUTPUT_DIR/work
    participant_label: list = field(default_factory=list)
    bids_filter_file: str = ""
    validation: list = field(default_factory=list)
    val_fraction: float = 0.2
    template: str = ""  # empty: the bundled DeepBleed template
    brain_extraction: str = "native"
    registration_seed: int = 1
    nprocs: int = 1
    omp_nthreads: int = 1
    verbose: int = 0
    prepare_only: bool = False
    stop_after: int = None
    description: str = None
    license_text: str = None
