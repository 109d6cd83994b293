"""The pipeline's settings whose stages live in heavy modules (torch), kept here so that the
command line and the flows' parameter forms are built without importing those stages.

    PolicyConfig    the ManiFlow policy's architecture and augmentation (maniflow.policy)
    TrainConfig     a training run's full settings; PRESETS: paper and demo (maniflow.train)
    DatasetConfig   how training datasets are written (maniflow.datasets)
    TrainOptions    what a user may change of a cell's preset (maniflow.train)
    EvalConfig      closed-loop and offline evaluation (maniflow.evaluate)
    ExportConfig    datasets out, for other trainers (maniflow.exporters)
    PathSource      a further path source of a matrix: provider and, optionally, its servers
    PrepareConfig   source, path provider, client, datasets and exports of prepare-data
    PrepareJob      one (env, task) to prepare: the unit prepare-data maps its episodes over

The other branches of the configuration tree sit with their light modules: `SourceOptions`
(maniflow.robotwin.layout), `ProviderConfig` (maniflow.paths.label), `ClientConfig`
(maniflow.paths.client), `Cell` (maniflow.workspace). docs/architecture.md draws the tree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from maniflow.config import config, setting
from maniflow.paths.client import ClientConfig
from maniflow.paths.label import ProviderConfig
from maniflow.robotwin import SourceOptions
from maniflow.workspace import Cell, Workspace

CHECKPOINT_RULES = ("best", "latest", "every")
EVAL_SEED = 1000  # evaluation layouts: `maniflow generate` uses seed 0 unless told otherwise
CAMERA = "head"  # the camera the datasets are made from


@dataclass(frozen=True)
class PolicyConfig:
    channels: int = 3  # per image input: 3 (RGB or overlay) or 6 (concat)
    initial: bool = False  # the episode's first frame as a second image input
    image_size: int = 224
    encoder: str = "resnet18"
    share_encoder: bool = False
    encoder_weights: str | None = None
    action_dim: int = 14  # the joint vector's width; training sets it from the data
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 16
    dim: int = 512
    depth: int = 8
    heads: int = 8
    dropout: float = 0.1
    inference_steps: int = 10
    flow_share: float = 0.75
    crop: float = 0.95
    rotate_deg: float = 5.0
    brightness: float = 0.3
    contrast: float = 0.4
    saturation: float = 0.5
    hue: float = 0.08
    # agent_pos: "identity" (upstream) or "limits", min/max to [-1, 1] like the actions. The demo's
    # toy model learns from small raw joint ranges (0.25-0.5 rad) far slower (docs/maniflow-fidelity.md).
    state_norm: str = "identity"

    @property
    def model_horizon(self) -> int:
        """Actions per training window and per prediction: long enough that all n_action_steps
        actions from the current step exist (upstream's horizon 16 returns 15 of 16)."""
        return max(self.horizon, self.n_obs_steps - 1 + self.n_action_steps)


@dataclass(frozen=True)
class TrainConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    batch_size: int = 64
    epochs: int = 501
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float | None = None  # upstream clips nothing
    ema_power: float = 0.75
    ema_max: float = 0.9999
    val_ratio: float = 0.1
    # The store's last episodes are never trained or validated on: the offline evaluation's
    # held-out set (the same positions in every store of a task, so every cell is judged alike).
    holdout_episodes: int = 0
    top_k: int = 3
    val_every: int = 10  # epochs between validations (top-k candidates); the last epoch always
    checkpoint_every: int = 10  # epochs between latest.ckpt writes; the last epoch always
    keep_every: int = 0  # keep the EMA weights every k epochs (checkpoints/every/) for `checkpoint: every`; 0: off
    log_every: int = 50  # steps between progress reports (each waits for the device)
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    bf16: bool = True  # bf16 autocast and channels_last encoders, on CUDA only
    compile: bool = False  # torch.compile the encoders and the DiTX (slow first steps)

    def __post_init__(self):
        if min(self.val_every, self.checkpoint_every, self.log_every) < 1 or self.keep_every < 0:
            raise ValueError("val_every, checkpoint_every and log_every are counts of at least 1; keep_every is >= 0")


# Settings that change how a run goes, not what it computes: a run resumes under other values.
RUN_MECHANICS = ("device", "compile", "log_every", "keep_every", "checkpoint_every")


PRESETS = {
    # The user's settings (seed config): 8 layers, 8 heads, width 512, 224x224, horizon 16.
    "paper": TrainConfig(holdout_episodes=5),
    # Same code at toy sizes, sized so that `make demo` trains its 9 cells (three conditions x
    # three seeds) towards a plateau of their validation loss, in about ten minutes on 2 CPU cores,
    # two cells at a time (docs/training.md, benchmarks/bench_demo_preset.py): 32 px (the drawn
    # path is still visible; at 24 px it is lost), one observation step, DiTX 2 x 4 x 128, lr
    # 2e-3 clipped at 1.0 (twenty times upstream's, for 36 epochs). EMA power 0.5: upstream's
    # 0.75 is sized for hundreds of thousands of steps; over this run's ~1,000 its average trails
    # the model by a fifth of the run, and the validation loss (of the EMA) was still falling at
    # the end. agent_pos min/max-normalised: lower action error and more successes than raw joint
    # angles at this size (benchmarks/bench_state_norm.py).
    "demo": TrainConfig(policy=PolicyConfig(image_size=32, n_obs_steps=1, encoder="test_resnet", dim=128, depth=2,
                                            heads=4, dropout=0.0, inference_steps=2, state_norm="limits"),
                        batch_size=32, epochs=36, lr=2e-3, warmup_steps=20, grad_clip=1.0, ema_power=0.5, top_k=2,
                        holdout_episodes=2, val_every=1, checkpoint_every=4, log_every=30),
}


@config
class DatasetConfig:
    """How training datasets are written."""

    resolution: int = setting(224, "square training resolution")
    dtype: str = setting("uint8", "image dtype; float32 (values 0-1, 4x the bytes) matches the user's old datasets",
                         choices=("uint8", "float32"))
    # Blosc-zstd level 1 (benchmarks/bench_datasets.py): level 3 saves ~10% of bytes for ~3x the
    # encoding time, which would dominate rendering; shuffle only helps float32.
    clevel: int = setting(1, "Blosc-zstd compression level", show=False)

    def __post_init__(self):
        if self.dtype not in ("uint8", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: uint8 or float32")
        if self.resolution < 8:
            raise ValueError(f"resolution {self.resolution} is too small")

    def compressor(self):
        import numcodecs

        shuffle = numcodecs.Blosc.SHUFFLE if self.dtype == "float32" else numcodecs.Blosc.NOSHUFFLE
        return numcodecs.Blosc(cname="zstd", clevel=self.clevel, shuffle=shuffle)


@config
class ExportConfig:
    """Which views of a rendered (env, task) dataset go out, and how (maniflow.exporters)."""

    formats: tuple[str, ...] = setting((), "comma-separated export formats: lerobot-v2.1 (OpenPI), lerobot-v3.0 "
                                       "(current LeRobot), robotwin (the zarr RoboTwin's DP and ManiFlow read)")
    views: tuple[str, ...] = setting(("overlay",), "comma-separated images: original, overlay (the path drawn on the "
                                     "frame), path (the path on black); the first is observation.images.cam_high")
    video: bool = setting(False, "LeRobot: store the images as MP4 (H.264) instead of PNG")
    rename: tuple[str, ...] = setting((), "comma-separated FROM=TO feature renames, e.g. "
                                      "observation.images.cam_high=observation.images.top")
    file_size_mb: float = setting(100.0, "LeRobot v3.0: a data parquet file takes episodes up to this size "
                                  "(LeRobot's default)")

    def __post_init__(self):
        from maniflow.exporters import EXPORTERS, VIEWS

        for name in self.formats:
            EXPORTERS[name]  # raises with the choices
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views or len(set(self.views)) < len(self.views):
            raise ValueError(f"views {list(self.views)}: one or more of {', '.join(VIEWS)}, each once")
        for item in self.rename:
            if item.count("=") != 1 or not all(item.split("=")):
                raise ValueError(f"rename {item!r}: write FROM=TO")
        if self.file_size_mb <= 0:
            raise ValueError(f"file_size_mb {self.file_size_mb}: more than 0")

    @property
    def renames(self) -> dict[str, str]:
        return dict(item.split("=") for item in self.rename)


@config
class TrainOptions:
    """What a user may change of a cell's preset (the cell names the preset and the seed)."""

    epochs: int | None = setting(None, "override the preset's epochs")
    batch_size: int | None = setting(None, "override the preset's batch size")
    device: str | None = setting(None, "auto (the preset's default: cuda when available), cpu, cuda, cuda:1, ...")
    val_every: int | None = setting(None, "epochs between validations (default: the preset's)")
    checkpoint_every: int | None = setting(None, "epochs between latest.ckpt writes (default: the preset's)")
    keep_every: int | None = setting(None, "keep the EMA weights every k epochs, for evaluation with --checkpoint "
                                     "every (default: the preset's, 0 = off)")
    compile: bool = setting(False, "torch.compile the encoders and DiTX (minutes of compilation first)")
    encoder_weights: str | None = setting(None, "local ResNet-18 state dict (ImageNet or R3M); default: random "
                                          "initialisation")

    def resolve(self, cell: Cell) -> TrainConfig:
        """The cell's preset with the cell's seed and these overrides."""
        overrides = {k: v for k, v in asdict(self).items() if v is not None and k != "encoder_weights"}
        cfg = replace(PRESETS[cell.preset], seed=cell.seed, **overrides)
        if self.encoder_weights:
            cfg = replace(cfg, policy=replace(cfg.policy, encoder_weights=self.encoder_weights))
        return cfg


@config
class PathSource:
    """A further path source of an experiment matrix (the path label as an axis): what labels the
    data and draws the paths in closed loop, and the servers it asks when they are not the data's."""

    provider: ProviderConfig = setting(factory=lambda: ProviderConfig(kind="oracle"),
                                       help="the provider, under its own label (default: the oracle, the ground truth)")
    client: ClientConfig | None = setting(None, help="its VLM servers, for labelling and in closed loop (default: the "
                                          "data's and the evaluation's)")


@config
class EvalConfig:
    """How cells are evaluated (the same for every cell of a report)."""

    env: str = setting("cluttered", "evaluation scenes (every cell is evaluated on cluttered scenes)")
    episodes: int = setting(100, "closed-loop episodes per cell: layouts the scripted expert solves (RoboTwin's "
                            "protocol: 100)")
    seed: int = setting(EVAL_SEED, "seed of the evaluation layouts (the same for every cell)")
    checkpoint: str = setting("best", "which weights are evaluated: best (lowest EMA validation loss), latest, or "
                              "every (each kept every keep_every epochs; the best closed-loop one is reported, "
                              "labelled optimistic: it is chosen on the evaluation layouts)",
                              choices=CHECKPOINT_RULES)
    execute_steps: int = setting(8, "actions executed of each predicted chunk")
    inference_steps: int | None = setting(None, "flow steps per prediction (default: the policy's)")
    paths: ProviderConfig = setting(ProviderConfig(kind="oracle"),
                                    help="path source in closed loop, the provider interface of labelling; it "
                                    "should be the one the training data's paths came from")
    client: ClientConfig = setting(factory=ClientConfig, help="VLM endpoints when the path source asks a server")
    offline: bool = setting(True, "also the offline action error on held-out episodes")
    strips: int = setting(2, "closed-loop episodes kept as image strips for the report")
    strip_frames: int = setting(8, "frames per strip")
    batch_size: int = setting(64, "windows per batch of the offline metrics")
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...")

    def __post_init__(self):
        if self.checkpoint not in CHECKPOINT_RULES:
            raise ValueError(f"checkpoint {self.checkpoint!r}: choose from {', '.join(CHECKPOINT_RULES)}")
        if self.episodes < 1:
            raise ValueError(f"episodes {self.episodes}: at least 1")

    def for_label(self, label: str, sources: list[PathSource] = ()) -> EvalConfig:
        """The evaluation of a cell trained on `label`'s paths: in closed loop its paths come from
        the source that made that label when it is one of `sources` (a matrix's further path
        sources), else from `paths`."""
        source = next((s for s in sources if s.provider.name == label), None)
        if source is None:
            return self
        return replace(self, paths=source.provider, client=source.client or self.client)

    def identity(self) -> dict:
        """What the results depend on: the settings, less the endpoints of a computed path source,
        with the prompt file's content (its hash), not only its name."""
        out = asdict(self)
        if self.paths.computed:
            out["client"] = None
        if self.paths.prompt_file:  # by its content, not where the file lies
            out["paths"]["prompt_file"] = self.paths.identity()["prompt_sha"]
        return out


@config
class PrepareConfig:
    source: SourceOptions = setting(factory=SourceOptions, help="which RoboTwin recordings are read, and how")
    provider: ProviderConfig = setting(factory=ProviderConfig, help="what answers each frame's path")
    client: ClientConfig = setting(factory=ClientConfig, help="the VLM servers (unused by the oracle)")
    dataset: DatasetConfig = setting(factory=DatasetConfig, help="how the training datasets are written")
    export: ExportConfig = setting(factory=ExportConfig, help="datasets out for other trainers (none by default)")
    label_retries: int = setting(2, "prepare-data: retries of an episode whose endpoints failed")
    label_retry_delay_s: float = setting(60.0, "prepare-data: seconds before such a retry")

    def client_for(self, work) -> ClientConfig | None:
        """The client of a VLM provider (None for a computed one). Its in-flight limits hold
        across every process labelling in `work` (lock files under .locks/vlm)."""
        if not self.provider.provider.needs_client:
            return None
        return replace(self.client, slot_dir=self.client.slot_dir or str(Workspace.of(work).locks("vlm")))


@config
class PrepareJob:
    """One (env, task) to prepare: the unit the flow maps its episodes over."""

    root: str = setting(help="RoboTwin data root")
    work: str = setting(help="work directory")
    env: str = setting(help="clean or cluttered")
    task: str = setting(help="task name")
    cfg: PrepareConfig = setting(factory=PrepareConfig, help="how")

    @property
    def config_name(self) -> str:
        return self.cfg.source.config_name(self.env)

    def __str__(self) -> str:
        return f"{self.env}/{self.task}"
