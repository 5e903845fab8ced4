"""One PNG per op from its CSV: speedup vs eager per shape, a bar per provider, a panel per
(dtype, mode). matplotlib is optional (the `fastgan[bench]` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

METRIC = "speedup_vs_eager"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_op(rows: Sequence[dict[str, str]], op: str, path: Path) -> Path | None:
    """Write the speedup-vs-eager chart of `op` to path; None if matplotlib or data is missing."""
    rows = [r for r in rows if r["op"] == op and r["metric"] == METRIC]
    if not rows or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or a GPU box
    import matplotlib.pyplot as plt

    def ordered(col: str) -> list[str]:
        return list(dict.fromkeys(r[col] for r in rows))

    dtypes, modes = ordered("dtype"), ordered("mode")
    shapes, providers = ordered("shape"), ordered("provider")
    value = {(r["dtype"], r["mode"], r["shape"], r["provider"]): r for r in rows}
    # A row per mode, a column per dtype; each panel wide enough for its shapes x providers bars.
    panel_w = max(5.0, 0.3 * len(shapes) * len(providers) + 1.5)
    fig, axes = plt.subplots(
        len(modes), len(dtypes), squeeze=False, sharey=True,
        figsize=(panel_w * len(dtypes), 3.6 * len(modes)),
    )
    width = 0.8 / len(providers)
    for i, mode in enumerate(modes):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            for k, prov in enumerate(providers):
                xs, ys, lo, hi = [], [], [], []
                for s, shape in enumerate(shapes):
                    r = value.get((dtype, mode, shape, prov))
                    if r is None:
                        continue
                    p50 = float(r["p50"])
                    xs.append(s + (k - (len(providers) - 1) / 2) * width)
                    ys.append(p50)
                    lo.append(max(p50 - float(r["p20"]), 0.0))
                    hi.append(max(float(r["p80"]) - p50, 0.0))
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=prov)
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes if i == len(modes) - 1 else [], rotation=25, ha="right",
                               fontsize=7)
            ax.set_title(f"{op} {mode} {dtype}", fontsize=9)
            if j == 0:
                ax.set_ylabel("speedup vs eager\n(p50, p20-p80 band)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(providers), fontsize=8,
               bbox_to_anchor=(0.5, 0.965), frameon=False)
    meta = rows[0]
    fig.suptitle(f"{meta['device']} | torch {meta['torch']} | fastgan {meta['fastgan']} "
                 f"@ {meta['git_sha']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # leave the top strip to the title and legend
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
