"""Pictures a user looks at after a toy run: samples over data, trajectories, per-t diagnostics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

LIM = 6.0


def plot_samples(samples: Tensor, data: Tensor, path: Path, title: str) -> None:
    """Scatter of model samples (N, 2) beside data (N, 2)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data"), (axes[1], samples, "samples")):
        p = pts[:5000].cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4)
        ax.set_title(name)
        ax.set_xlim(-LIM, LIM)
        ax.set_ylim(-LIM, LIM)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_trajectories(trajectory: Tensor, path: Path, title: str, n: int = 300) -> None:
    """trajectory (steps+1, B, 2): paths from noise (grey) to samples (blue) -- the seeds' first debugging tip."""
    traj = trajectory[:, :n].cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    for i in range(traj.shape[1]):
        ax.plot(traj[:, i, 0], traj[:, i, 1], color="k", alpha=0.15, lw=0.6)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, color="grey", label="t=0 (noise)")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, color="tab:blue", label="t=1 (samples)")
    ax.set_xlim(-LIM, LIM)
    ax.set_ylim(-LIM, LIM)
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_t_diagnostics(centers: np.ndarray, loss: np.ndarray, model_norm: np.ndarray, target_norm: np.ndarray,
                       path: Path) -> None:
    """Loss per t-bin and the mean norm of the predicted vs target vector field per t."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar(centers, loss, width=0.8 / len(centers))
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("CFM loss")
    axes[0].set_title("loss per t-bin")
    axes[1].plot(centers, model_norm, "o-", label="model |u_theta(x_t, t)|")
    axes[1].plot(centers, target_norm, "s--", label="target |u(x_t | z)|")
    axes[1].set_xlabel("t")
    axes[1].set_title("mean vector-field norm per t")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
