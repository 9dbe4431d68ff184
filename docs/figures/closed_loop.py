"""Draws docs/figures/closed_loop.png, the picture of the closed loop at the top of the README and the site.

    python docs/figures/closed_loop.py
"""
import pathlib

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = pathlib.Path(__file__).with_name("closed_loop.png")


def box(ax, x, y, w, h, title, lines, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.03", fc=color, ec="#333333",
                                lw=1.2))
    ax.text(x + w / 2, y + h - 0.07, title, ha="center", va="top", fontsize=12, weight="bold")
    ax.text(x + w / 2, y + h - 0.2, "\n".join(lines), ha="center", va="top", fontsize=9.5, linespacing=1.5)


def arrow(ax, start, end, label, label_xy, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, lw=1.6, color="#333333",
                                 connectionstyle=f"arc3,rad={rad}"))
    ax.text(*label_xy, label, ha="center", va="center", fontsize=9.5, style="italic")


def main():
    fig = Figure(figsize=(9.6, 3.6), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 2.2)
    ax.set_ylim(0, 1.0)
    ax.axis("off")
    box(ax, 0.05, 0.36, 0.72, 0.58, "agent: CrossModalModel",
        ["one encoder per modality", "cross-attention: modalities <-> internal state",
         "GRU memory (carry)", "action head"], "#dbe9f6")
    box(ax, 1.43, 0.36, 0.72, 0.58, "world: a gymnax environment",
        ["step_env(key, state, action, params)", "task = one EnvParams value",
         "switching task = other params,", "same compiled program"], "#e3f1de")
    arrow(ax, (0.79, 0.78), (1.41, 0.78), "action", (1.1, 0.84))
    arrow(ax, (1.41, 0.47), (0.79, 0.47), "observations [M, D]\n+ feedback (reward, action)", (1.1, 0.57))
    ax.text(1.1, 0.16, "learning task after task: EWC / SI / MAS / replay / ... penalties and memories; "
            "Fisher diagonals from per-sample gradients;\nparameter and behaviour divergence monitored; "
            "the whole run one compiled program, vmapped over seeds and swept hyperparameters",
            ha="center", va="center", fontsize=9, color="#444444")
    fig.savefig(OUT)


if __name__ == "__main__":
    main()
