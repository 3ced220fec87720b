"""PNG figures without a display, written to local or remote paths (``paths.open``).

matplotlib is imported on first use, so commands that draw nothing never load it.
"""

import numpy as np

from infini_jax import paths


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save(fig, path: str, dpi: int = 120) -> None:
  """Writes ``fig`` as a PNG to ``path`` (local or ``gs://``) and closes it."""
  fig.tight_layout()
  with paths.open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  pyplot().close(fig)


def heat_map(values: np.ndarray, path: str, title: str, *, xticks, yticks, xlabel: str,
             ylabel: str, colorbar: str, cmap: str, vmax: float, fmt: str,
             cell: tuple = (0.55, 0.45), fontsize: int = 7, max_labels: int = 256) -> None:
  """``values [rows, columns]`` as a heat map from 0 to ``vmax``, each cell labelled with
  ``fmt`` (up to ``max_labels`` cells); ``cell``: inches a column and a row."""
  plt = pyplot()
  rows, columns = values.shape
  fig, ax = plt.subplots(figsize=(1.6 + cell[0] * columns, 1.3 + cell[1] * rows))
  image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
  ax.set_xticks(range(columns), xticks)
  ax.set_yticks(range(rows), yticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if values.size <= max_labels:
    for (i, j), value in np.ndenumerate(values):
      ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=fontsize)
  fig.colorbar(image, ax=ax, label=colorbar)
  ax.set_title(title, fontsize=9)
  save(fig, path)
