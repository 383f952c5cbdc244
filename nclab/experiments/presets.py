"""The paper's real-network experiments (paper-experiments.md) at full size, and CPU-sized versions.

Full size ("paper-*", a GPU; CIFAR-10 / MNIST files under ``data_root``): the published settings, with
the decays and learning rate converted to nclab's exact objective (nclab.experiments.objective). The
published code minimizes, per batch B of a training set of N samples with K classes,

    L_paper = c^-1 (1/|B|) sum_B ell_i + wd/2 sum_j ||W_j||^2 + fd/2 sum_B ||h_i||^2,

c = K for MSE (nn.MSELoss averages over the K outputs, and the code halves the loss) and c = 2 for CE
(halved), i.e. c^-1 times nclab's batch loss with lambda_w = c wd, lambda_h = c |B| fd / N. SGD with lr
on L_paper equals SGD with lr / c on nclab's loss; Adam is invariant to the factor. :func:`from_paper`
does the conversion; the optimizer's own weight decay is off ("sep_decay" in the published code).

CPU-sized ("cpu-*"): the same effects on a laptop in minutes, on Fashion-MNIST subsets (Debian's
dataset-fashion-mnist package) or the embedded digits: NC1 falls by more than 10x from the first to the
last metrics row (measured on 2 cores: the numbers in each description; MLP and ResNet18 checked at depths
1, 3 and 6, VGG16 at 3). Every preset accepts overrides (``depth``, ``seed``, ...).
Without batch norm, the imbalanced MLP at depth 6 stops in a minority-collapsed local minimum (train
accuracy ~0.83, f > f*, NC1 ill-conditioned) that the theory's global minimizer does not have: deep
heads are hard to train from PyTorch's default init.
"""

from __future__ import annotations

from nclab.data import PAPER_IMBALANCED_COUNTS


def from_paper(loss: str, K: int, batch: int, n: int, *, weight_decay: float, feature_decay: float, lr: float,
               optimizer: str) -> dict:
    """nclab's (lambda_w, lambda_h, lr) for the published code's (weight_decay, feature_decay, lr)."""
    c = K if loss == "mse" else 2
    return {"lambda_w": c * weight_decay, "lambda_h": c * batch * feature_decay / n,
            "lr": lr / c if optimizer == "sgd" else lr}


_GPU = dict(device="cuda", epochs=200, batch_size=128, track_every=1, checkpoint_every=10, eval_batch_size=2048)
_CIFAR = dict(dataset="cifar10")  # data_root: pass the folder holding cifar-10-batches-py/


def _mlp_balanced(dataset: str, n: int, **data) -> dict:
    return dict(_GPU, dataset=dataset, **data, arch="mlp", width=1024, mlp_depth=6, batch_norm=True, depth=3,
                bias=True, loss="mse", optimizer="adam",
                **from_paper("mse", 10, 128, n, weight_decay=1e-4, feature_decay=1e-4, lr=1e-4, optimizer="adam"))


def _deep_net(arch: str, loss: str) -> dict:
    return dict(_GPU, **_CIFAR, arch=arch, width=512, depth=3, bias=True, loss=loss, optimizer="sgd", momentum=0.9,
                schedule="step", step_size=50, gamma=0.1,
                **from_paper(loss, 10, 128, 50000, weight_decay=1e-4, feature_decay=1e-4, lr=1e-3, optimizer="sgd"))


N_IMB = sum(PAPER_IMBALANCED_COUNTS)
PRESETS: dict[str, dict] = {
    # ---- full size (GPU)
    "paper-mlp-cifar10": _mlp_balanced("cifar10", 50000),
    "paper-mlp-mnist": _mlp_balanced("mnist", 60000, channels=3, size=32),
    "paper-resnet18-cifar10": _deep_net("resnet18", "mse"),
    "paper-resnet18-cifar10-ce": _deep_net("resnet18", "ce"),
    "paper-vgg16-cifar10": _deep_net("vgg16", "mse"),
    "paper-vgg16-cifar10-ce": _deep_net("vgg16", "ce"),
    "paper-mlp-cifar10-imbalanced": dict(
        _GPU, **_CIFAR, counts=list(PAPER_IMBALANCED_COUNTS), arch="mlp", width=2048, mlp_depth=6, batch_norm=False,
        depth=3, bias=False, loss="mse", optimizer="adam", epochs=12000, batch_size=0, schedule="multistep",
        milestones=[6000], gamma=0.1, track_every=50, checkpoint_every=500,
        **from_paper("mse", 10, N_IMB, N_IMB, weight_decay=1e-5, feature_decay=1e-5, lr=1e-4, optimizer="adam")),
    # ---- CPU-sized (2 cores, minutes)
    "cpu-mlp-balanced": dict(
        dataset="fashion-mnist", counts=[100] * 10, test_per_class=100, arch="mlp", width=64, mlp_depth=3,
        depth=3, bias=True, loss="mse", optimizer="adam", lr=1e-3, lambda_w=1e-4, lambda_h=1e-4, epochs=60,
        batch_size=50, track_every=2),
    "cpu-mlp-imbalanced": dict(
        dataset="fashion-mnist", counts=[c // 4 for c in PAPER_IMBALANCED_COUNTS], test_per_class=100, arch="mlp",
        width=64, mlp_depth=3, depth=3, bias=False, loss="mse", optimizer="adam", lr=1e-3,
        lambda_w=1e-4, lambda_h=1e-4, epochs=1500, batch_size=0, schedule="multistep", milestones=[1000],
        track_every=50),
    "cpu-resnet18": dict(
        dataset="digits", counts=[20] * 10, test_per_class=0, arch="resnet18", width=64, depth=3, bias=True,
        loss="mse", optimizer="adam", lr=1e-3, lambda_w=1e-4, lambda_h=1e-4, epochs=100, batch_size=0,
        track_every=10),
    "cpu-vgg16": dict(
        dataset="digits", size=32, counts=[10] * 10, test_per_class=0, arch="vgg16", width=64, depth=3, bias=True,
        loss="mse", optimizer="adam", lr=1e-4, lambda_w=1e-4, lambda_h=1e-4, epochs=150, batch_size=0,
        track_every=10),
}

DESCRIPTIONS = {
    "paper-mlp-cifar10": "MLP (6 x 1024, BN) + M linear layers, CIFAR-10 balanced, MSE, Adam 1e-4, 200 epochs",
    "paper-mlp-mnist": "the same on MNIST (3 x 32 x 32, the paper's pipeline)",
    "paper-resnet18-cifar10": "ResNet18 + M linear layers (512), CIFAR-10, MSE, SGD, step decay, 200 epochs",
    "paper-resnet18-cifar10-ce": "ResNet18 + M linear layers, CIFAR-10, cross-entropy",
    "paper-vgg16-cifar10": "VGG16-BN + M linear layers (512), CIFAR-10, MSE, SGD, step decay, 200 epochs",
    "paper-vgg16-cifar10-ce": "VGG16-BN + M linear layers, CIFAR-10, cross-entropy",
    "paper-mlp-cifar10-imbalanced": "MLP (6 x 2048) + M bias-free layers, CIFAR-10 counts 100..500, full batch, "
                                    "12,000 epochs: GOF",
    "cpu-mlp-balanced": "MLP (3 x 64, BN) + M layers, 1,000 Fashion-MNIST images, bias: ETF; M = 3: NC1 5.65 -> "
                        "0.014 in 60 epochs, 5 s (2 cores, load 2.2)",
    "cpu-mlp-imbalanced": "MLP (3 x 64, BN) + M bias-free layers, 750 Fashion-MNIST images, counts 25..125, full "
                          "batch: GOF; M = 3: NC1 5.59 -> 0.001 in 1,500 epochs, 8 s (2 cores, load 2.2)",
    "cpu-resnet18": "ResNet18 + M layers, 200 embedded 8 x 8 digits, full batch; M = 3: NC1 1.02 -> 0.0016, 75 s "
                    "(2 cores, load 3.3)",
    "cpu-vgg16": "VGG16-BN + M layers, 100 embedded digits at 32 x 32, full batch; M = 3: NC1 0.53 -> 1.7e-4, "
                 "490 s (2 cores, load 3.3)",
}


def preset_options(name: str) -> dict:
    """A copy of a preset's options (make_train_config keywords)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
