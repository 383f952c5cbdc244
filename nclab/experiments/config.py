"""Configuration of one real-network training run: a frozen dataclass, validated once, saved verbatim.

Build with :func:`make_train_config` (keyword options, optionally on top of a preset) or
:func:`load_toml` (a TOML file whose keys are the field names). Every field is also a flag of
``nclab train``; the help texts below are the flags' help.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits")
ARCHS = ("mlp", "resnet18", "vgg16")
LOSSES = ("mse", "ce")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "multistep", "cosine")
DTYPES = ("float32", "float64")
TARGETS = ("auto", "etf", "of")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
CHOICES = {"dataset": DATASETS, "arch": ARCHS, "loss": LOSSES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
           "dtype": DTYPES, "target": TARGETS}
NUM_CLASSES = 10  # every dataset here has labels 0..9


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (build with :func:`make_train_config`).

    The objective (exact, theory.md / nclab.theory.objective with H the head-input features)::

        f = (1/N) sum_i [ ell(z_i, y_i) + (N lambda_h / 2) ||h_i||^2 ] + sum_j lambda_w[j]/2 ||W_j||_F^2

    ell = 1/2 ||z - e_y||^2 (MSE, summed over the K outputs) or the cross-entropy; N = training samples.
    A batch B minimizes the same f: its loss is (1/|B|) sum_{i in B} [...] + sum_j lambda_j/2 ||W_j||^2,
    whose mean over the batches of an epoch (weighted by |B|/N) is exactly f. The head weights and
    its bias get no optimizer weight decay; ``weight_decay`` applies to the backbone only.
    """

    # data
    dataset: str = _f("digits", "mnist, fashion-mnist, cifar10 (local files) or digits (embedded)")
    data_root: str | None = _f(None, "Folder with the dataset files [default: Debian's Fashion-MNIST folder; "
                                              "unused for digits]")
    counts: tuple[int, ...] | None = _f(None, "Training samples per class, e.g. 100,100,200 (K = its length, "
                                              "classes 0..K-1); default: the whole split")
    test_per_class: int | None = _f(None, "Test samples per class (0: no test set) [default: the whole split]")
    channels: int | None = _f(None, "Repeat grayscale images to this many channels [default: native]")
    size: int | None = _f(None, "Resize images to size x size [default: native]")
    # model
    arch: str = _f("mlp", "Backbone: mlp, resnet18 or vgg16")
    depth: int = _f(1, "M, linear layers in the head (incl. the classifier)")
    width: int = _f(64, "Width of the head's hidden layers (and of the MLP backbone unless --mlp-width)")
    bias: bool = _f(True, "Unregularized bias on the last head layer")
    mlp_depth: int = _f(6, "Linear+BN+ReLU blocks of the MLP backbone")
    mlp_width: int | None = _f(None, "Width of the MLP backbone [default: --width]")
    batch_norm: bool = _f(True, "Batch norm in the MLP / VGG16 backbone")
    # objective
    loss: str = _f("mse", "mse (1/2 ||z - e_y||^2 per sample) or ce")
    lambda_w: tuple[float, ...] = _f((1e-4,), "Weight decay of the head layers W_1..W_M (one value or M)")
    lambda_h: float = _f(1e-4, "Feature decay lambda_H of the head input (0: off), scaled per sample")
    weight_decay: float = _f(0.0, "Optimizer weight decay of the backbone parameters")
    # optimizer
    optimizer: str = _f("adam", "sgd (momentum) or adam")
    lr: float = _f(1e-3, "Learning rate [default: sgd 0.01, adam 1e-3]")
    momentum: float = _f(0.9, "SGD momentum")
    epochs: int = _f(20, "Training epochs")
    batch_size: int = _f(128, "Largest batch (0: full batch); the N samples are split into ceil(N/B) "
                              "nearly equal batches")
    schedule: str = _f("constant", "Learning-rate schedule per epoch: constant, step, multistep, cosine")
    step_size: int = _f(0, "'step' schedule: multiply lr by gamma every this many epochs")
    milestones: tuple[int, ...] = _f((), "'multistep' schedule: epochs at which lr is multiplied by gamma")
    gamma: float = _f(0.1, "Schedule factor")
    # run
    seed: int = _f(0, "Seed of the init, the data order and the subsets")
    device: str = _f("cpu", "cpu, cuda or cuda:N (under torchrun: each process's cuda:LOCAL_RANK)")
    dtype: str = _f("float32", "float32 or float64 (model and data)")
    threads: int = _f(0, "torch CPU threads (0: automatic, as in simulate: 1 for small models, else the idle "
                             "cores)")
    track_every: int = _f(1, "NC metrics row every k epochs (and at epoch 0 and the last)")
    checkpoint_every: int = _f(0, "Checkpoint every k epochs (0: every 10 metrics rows); also at the end")
    eval_batch_size: int = _f(1024, "Batch size of the metrics and test passes")
    target: str = _f("auto", "NC2/NC3 target: auto (nclab.predict's minimizer for MSE with both decays > 0, "
                             "else etf with a bias or CE, of without), etf or of")

    @property
    def num_classes(self) -> int:
        return len(self.counts) if self.counts is not None else NUM_CLASSES

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_names(d)
        return make_train_config(**d)

    def replace(self, **changes) -> TrainConfig:
        if "depth" in changes and "lambda_w" not in changes and len(set(self.lambda_w)) == 1:
            changes["lambda_w"] = self.lambda_w[0]  # one decay for all layers follows the new depth
        return make_train_config(**{**self.to_dict(), **changes})


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
MAX_DEPTH = 100_000  # head layers; the model's memory is checked separately before it is built
EXTRA_OPTIONS = ("per_class", "preset")  # accepted by make_train_config / TOML, not stored


def check_names(options: dict, prefix: str = "") -> None:
    """Raise one ValueError naming unknown keys (with the closest field name)."""
    unknown = [k for k in options if k not in FIELDS and k not in EXTRA_OPTIONS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(FIELDS) + list(EXTRA_OPTIONS), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{prefix}unknown key(s) {', '.join(hints)}; valid keys: {', '.join(FIELDS)}")


# ------------------------------------------------------------------------------------------ validation
def _number(value, name: str, *, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


def _int(value, name: str, low: int) -> int:
    ok = not isinstance(value, bool)
    try:
        v = float(value) if ok else math.nan
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v == int(v) and v >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(v)


def _opt_int(value, name: str, low: int) -> int | None:
    return None if value is None else _int(value, name, low)


def _choice(value, name: str) -> str:
    if value not in CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    return value


def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _seq(value) -> list:
    if isinstance(value, str):
        items = value.replace(" ", "").split(",")
        if value.strip() and any(t == "" for t in items):
            raise ValueError(f"empty item in the comma-separated list {value!r}")
        return [t for t in items if t]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def make_train_config(preset: str | None = None, *, per_class: int | None = None, **options) -> TrainConfig:
    """Validate options (the :class:`TrainConfig` fields) into a TrainConfig; one clear ValueError per problem.

    Parameters
    ----------
    preset : name in :data:`nclab.experiments.presets.PRESETS`; ``options`` override its values.
    per_class : shorthand for ``counts = [per_class] * 10`` (a balanced subset).
    **options : TrainConfig fields. Sequences may be lists or comma-separated strings; ``lambda_w`` may
        be one number (all layers) or M numbers; ``lr=None`` takes the optimizer's default.
    """
    check_names(options)
    if preset is not None:
        from nclab.experiments.presets import preset_options

        base = preset_options(preset)
        if "depth" in options and "lambda_w" not in options and isinstance(base.get("lambda_w"), (list, tuple)):
            base["lambda_w"] = base["lambda_w"][0]
        if "optimizer" in options and "lr" not in options and options["optimizer"] != base.get("optimizer"):
            base.pop("lr", None)  # the new optimizer's default
        if per_class is not None:
            base.pop("counts", None)
        options = {**base, **options}
    if per_class is not None:
        if options.get("counts") is not None:
            raise ValueError("give counts or per_class, not both")
        options["counts"] = [_int(per_class, "per_class", 1)] * NUM_CLASSES
    d = {f.name: f.default for f in FIELDS.values()}
    optimizer = _choice(options.get("optimizer", d["optimizer"]), "optimizer")
    d["lr"] = DEFAULT_LR[optimizer]
    d.update({k: v for k, v in options.items() if not (k == "lr" and v is None)})
    out = dict(d)
    for name in ("dataset", "arch", "loss", "schedule", "dtype", "target"):
        out[name] = _choice(d[name], name)
    out["optimizer"] = optimizer
    if d["data_root"] is not None:
        out["data_root"] = os.fspath(d["data_root"])
    if d["counts"] is not None:
        counts = tuple(_int(c, "every entry of counts", 1) for c in _seq(d["counts"]))
        if not 2 <= len(counts) <= NUM_CLASSES:
            raise ValueError(f"counts needs 2 to {NUM_CLASSES} classes (one count each), got {list(counts)}")
        out["counts"] = counts
    for name, low in (("test_per_class", 0), ("channels", 1), ("size", 1), ("mlp_width", 1)):
        out[name] = _opt_int(d[name], name, low)
    for name, low in (("depth", 1), ("width", 1), ("mlp_depth", 1), ("epochs", 1), ("batch_size", 0),
                      ("step_size", 0), ("seed", 0), ("threads", 0), ("track_every", 1), ("checkpoint_every", 0),
                      ("eval_batch_size", 1)):
        out[name] = _int(d[name], name, low)
    for name in ("bias", "batch_norm"):
        out[name] = _bool(d[name], name)
    if out["depth"] > MAX_DEPTH:  # one decay per layer is stored: refuse before building the list
        raise ValueError(f"depth must be at most {MAX_DEPTH:,} head layers, got {out['depth']:,}")
    lam = tuple(_number(v, "lambda_w", low=0.0) for v in _seq(d["lambda_w"]))
    if len(lam) == 1:
        lam = lam * out["depth"]
    if len(lam) != out["depth"]:
        raise ValueError(f"lambda_w needs one value or one per head layer ({out['depth']}), got {list(lam)}")
    out["lambda_w"] = lam
    out["lambda_h"] = _number(d["lambda_h"], "lambda_h", low=0.0)
    out["weight_decay"] = _number(d["weight_decay"], "weight_decay", low=0.0)
    out["lr"] = _number(d["lr"], "learning rate lr", low=0.0, strict=True)
    out["momentum"] = _number(d["momentum"], "momentum", low=0.0)
    if out["momentum"] >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {d['momentum']!r}")
    out["gamma"] = _number(d["gamma"], "gamma", low=0.0, strict=True)
    out["milestones"] = tuple(_int(m, "every milestone", 1) for m in _seq(d["milestones"]))
    if list(out["milestones"]) != sorted(set(out["milestones"])):
        raise ValueError(f"milestones must be increasing, got {list(out['milestones'])}")
    if out["schedule"] == "step" and out["step_size"] < 1:
        raise ValueError("the 'step' schedule needs step_size >= 1 (epochs between lr decays)")
    if out["schedule"] == "multistep" and not out["milestones"]:
        raise ValueError("the 'multistep' schedule needs milestones (epochs at which lr is multiplied by gamma)")
    device = str(d["device"])
    if not (device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    out["device"] = device
    if out["arch"] == "vgg16":
        native = 32 if out["dataset"] == "cifar10" else 28 if out["dataset"] != "digits" else 8
        if (out["size"] or native) < 32:
            raise ValueError(f"vgg16 needs inputs of at least 32x32; {out['dataset']} images are {native}x{native}: "
                             "set size = 32")
    return TrainConfig(**out)


def load_toml(path) -> dict:
    """Options from a TOML file: top-level keys (or keys inside one level of tables, e.g. ``[model]``) are
    TrainConfig field names, plus ``preset`` and ``per_class``. Unknown keys are one clear error."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading TOML needs Python >= 3.11 (tomllib) or the tomli package") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None
    options: dict = {}
    for key, value in doc.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in options:
                raise ValueError(f"{path}: key {k!r} is given twice")
            options[k] = v
    check_names(options, f"{path}: ")
    return options
