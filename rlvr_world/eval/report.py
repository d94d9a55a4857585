"""A run's human-readable report: ``report.md`` with PNG learning curves and PNG sample grids.

What it decides:

* **matplotlib without global state.** Figures are ``matplotlib.figure.Figure`` objects drawn by a
  ``FigureCanvasAgg`` attached to them directly, never through ``pyplot``: no backend is selected, no
  figure registry is touched, nothing needs closing, and it works headless. matplotlib is imported lazily
  inside the functions, so ``import rlvr_world.eval`` does not import it (``markdown_table`` and ``Report``
  never need it).
* **Sample grids are composed in numpy, pixel-exact** (``grid_array``): nearest-neighbour upscaling by
  ``scale``, ``PAD`` white pixels around every cell, and a ``HEADER_PX``-tall title strip on top whose text
  alone is drawn by matplotlib. Cell (row i, column j) of an [H, W] frame at scale s starts at
  y = HEADER_PX + PAD + i * (H*s + PAD), x = PAD + j * (W*s + PAD). The PNG is then written as-is.
* **Atomic files.** Every file is written to a temporary file in its own directory and moved into place
  with ``os.replace``, so a reader (or a crash) never sees half a PNG or half a report.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch

__all__ = ["HEADER_PX", "PAD", "Report", "frame_grid", "grid_array", "markdown_table", "plot_curves"]

PAD = 2  # white pixels between (and around) the cells of a frame grid
HEADER_PX = 20  # height of a frame grid's title strip
_DPI = 100
_WHITE = 255


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """write(f) into a temp file next to `path`, then os.replace it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


# ----------------------------------------------------------------------------------------------- curves
def _moving_average(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    w = max(1, len(ys) // 20)
    smooth = np.convolve(np.asarray(ys, dtype=np.float64), np.ones(w) / w, mode="valid")  # [n - w + 1]
    return xs[w - 1:], smooth.tolist()


def plot_curves(rows: list[dict], keys: list[str], path, *, title: str = "", x: str = "step",
                kinds: dict[str, str] | None = None) -> Path:
    """One PNG with one subplot per key (a grid of up to 3 columns). rows are metrics.jsonl lines
    ({"step": int, "kind": "train"|"eval"|..., key: float|None, ...}). kinds maps a key to the row kind it
    is read from (default: any row having the key, one line per row kind). None/missing values are skipped;
    a key with no points is drawn as an empty subplot titled '<key> (no data)'. Train curves with > 50
    points also get a moving-average line (window max(1, n//20)). The image is (3 * grid rows) x
    (4 * grid columns) inches at 100 dpi. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not keys:
        raise ValueError("plot_curves: no keys to plot")
    kinds = kinds or {}
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4 * ncols, 3 * nrows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        lines: dict[str, tuple[list[float], list[float]]] = {}  # row kind -> (xs, ys)
        for row in rows:
            kind = str(row.get("kind", ""))
            if key in kinds and kind != kinds[key]:
                continue
            xv, yv = row.get(x), row.get(key)
            if xv is None or yv is None:
                continue
            xs, ys = lines.setdefault(kind, ([], []))
            xs.append(float(xv))
            ys.append(float(yv))
        if not lines:
            ax.set_title(f"{key} (no data)")
            continue
        ax.set_title(key)
        ax.set_xlabel(x)
        for kind, (xs, ys) in lines.items():
            order = sorted(range(len(xs)), key=xs.__getitem__)  # stable sort by x
            xs, ys = [xs[j] for j in order], [ys[j] for j in order]
            label = kind or None
            if kind == "train" and len(ys) > 50:
                ax.plot(xs, ys, alpha=0.3, label=label)
                ax.plot(*_moving_average(xs, ys), color=ax.lines[-1].get_color(), label=f"{kind} (avg)")
            else:
                ax.plot(xs, ys, marker="." if len(ys) < 50 else None, label=label)
        if len(ax.lines) > 1:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))


# ----------------------------------------------------------------------------------------------- frames
def _to_uint8(name: str, frames: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] uint8 or float in [0, 1] -> [N, H, W, 3] uint8 numpy."""
    frames = torch.as_tensor(frames).detach().cpu()
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frame_grid: column {name!r} must be [N, 3, H, W], got {tuple(frames.shape)}")
    if frames.is_floating_point():
        frames = frames.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    elif frames.dtype != torch.uint8:
        raise TypeError(f"frame_grid: column {name!r} must be uint8 or float, got {frames.dtype}")
    return frames.permute(0, 2, 3, 1).numpy()


def _title_strip(titles: list[str], width: int, cell_w: int) -> np.ndarray:
    """[HEADER_PX, width, 3] uint8: white, with titles[j] centred above column j (drawn by matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / _DPI, HEADER_PX / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    for j, t in enumerate(titles):
        # ~0.6 em per character: shrink the font (8 pt at most) so the title fits its column
        size_pt = min(8.0, cell_w / (0.6 * max(1, len(t))) * 72 / _DPI)
        fig.text((PAD + j * (cell_w + PAD) + cell_w / 2) / width, 0.5, t, ha="center", va="center", fontsize=size_pt)
    canvas.draw()
    rendered = np.asarray(canvas.buffer_rgba())[..., :3]  # [~HEADER_PX, ~width, 3]; float sizes may lose a px
    strip = np.full((HEADER_PX, width, 3), _WHITE, dtype=np.uint8)
    h, w = min(HEADER_PX, rendered.shape[0]), min(width, rendered.shape[1])
    strip[:h, :w] = rendered[:h, :w]
    return strip


def grid_array(columns: dict[str, torch.Tensor], *, max_rows: int = 8, scale: int = 2,
               diff: tuple[str, str] | None = None, titles: bool = True) -> np.ndarray:
    """The canvas ``frame_grid`` saves, as a [height, width, 3] uint8 array (layout: see the module
    docstring; without titles there is no header strip, so cells start at y = PAD + i * (H*s + PAD))."""
    if not columns:
        raise ValueError("frame_grid: no columns")
    if scale < 1 or max_rows < 1:
        raise ValueError(f"frame_grid: scale and max_rows must be >= 1, got {scale}, {max_rows}")
    arrays = {name: _to_uint8(name, t) for name, t in columns.items()}  # name -> [N, H, W, 3]
    first, ref = next(iter(arrays.items()))
    for name, a in arrays.items():
        if a.shape != ref.shape:
            raise ValueError(f"frame_grid: column {name!r} has [N, H, W] = {list(a.shape[:3])}, "
                             f"but column {first!r} has {list(ref.shape[:3])}")
    if diff is not None:
        a, b = (arrays[k].astype(np.int16) for k in diff)  # KeyError names a missing column
        arrays["|difference|"] = np.clip(np.abs(a - b) * 4, 0, 255).astype(np.uint8)  # amplified x4, RGB kept
    n, h, w, _ = ref.shape
    rows, cell_h, cell_w = min(n, max_rows), h * scale, w * scale
    top = HEADER_PX if titles else 0
    width = PAD + len(arrays) * (cell_w + PAD)
    canvas = np.full((top + PAD + rows * (cell_h + PAD), width, 3), _WHITE, dtype=np.uint8)
    for j, a in enumerate(arrays.values()):
        big = a[:rows].repeat(scale, axis=1).repeat(scale, axis=2)  # [rows, H*s, W*s, 3], nearest neighbour
        x0 = PAD + j * (cell_w + PAD)
        for i in range(rows):
            y0 = top + PAD + i * (cell_h + PAD)
            canvas[y0:y0 + cell_h, x0:x0 + cell_w] = big[i]
    if titles:
        canvas[:HEADER_PX] = _title_strip(list(arrays), width, cell_w)
    return canvas


def frame_grid(columns: dict[str, torch.Tensor], path, *, max_rows: int = 8, scale: int = 2,
               diff: tuple[str, str] | None = None) -> Path:
    """A PNG image grid: one row per sample (first max_rows), one column per entry of `columns`
    (e.g. {"context": ..., "ground truth": ..., "prediction": ...}), each tensor [N, 3, H, W] either uint8
    (0..255) or float in [0, 1] (clamped). With diff=("ground truth", "prediction") an extra last column
    "|difference|" shows |a - b| per pixel and RGB channel, amplified x4 and clamped. Column titles are drawn
    with matplotlib text above each column. Images are upscaled by `scale` with nearest neighbour. All
    columns must have the same N, H, W: ValueError naming the column and the shapes otherwise. The pixels
    are exactly ``grid_array(...)``'s (saved as RGBA with alpha 255). Returns the path."""
    from matplotlib.image import imsave

    rgb = grid_array(columns, max_rows=max_rows, scale=scale, diff=diff)  # [height, width, 3]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)  # [height, width, 4]
    return _atomic_write(path, lambda f: imsave(f, rgba, format="png"))


# --------------------------------------------------------------------------------------------- markdown
def _cell(v, floats: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):  # float, np.float32, ... not bool
        return floats.format(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str], *, floats: str = "{:.4f}") -> str:
    """A GitHub markdown table: header from columns, one line per row, floats formatted with `floats`,
    None (or a missing key) -> '—', other values str() (with '|' escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), floats) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Builder of report.md: Report(title).text(md).table(rows, columns).image(relpath, caption).write(path).
    Methods return self for chaining. write(path) writes atomically and returns the Path; image paths are
    written relative to the report's directory (pass paths relative to it, or absolute paths inside it,
    which are made relative; an absolute path outside it is a ValueError)."""

    def __init__(self, title: str):
        self.title = title
        self._blocks: list[str | tuple[Path, str]] = []  # markdown, or (image path, caption) resolved on write

    def text(self, md: str) -> Report:
        self._blocks.append(md.strip("\n"))
        return self

    def table(self, rows: list[dict], columns: list[str], *, floats: str = "{:.4f}") -> Report:
        self._blocks.append(markdown_table(rows, columns, floats=floats))
        return self

    def image(self, path: str | os.PathLike, caption: str = "") -> Report:
        self._blocks.append((Path(path), caption))
        return self

    def render(self, directory: str | os.PathLike = ".") -> str:
        """The markdown, with image links relative to `directory` (the report's directory)."""
        directory = Path(directory).absolute()
        out = [f"# {self.title}"]
        for block in self._blocks:
            if isinstance(block, str):
                out.append(block)
                continue
            path, caption = block
            if path.is_absolute():
                rel = os.path.relpath(path, directory)
                if rel == ".." or rel.startswith(".." + os.sep):
                    raise ValueError(f"Report: image {path} is outside the report's directory {directory}")
                path = Path(rel)
            link = path.as_posix()
            link = f"<{link}>" if " " in link else link
            out.append(f"![{caption}]({link})" + (f"\n\n*{caption}*" if caption else ""))
        return "\n\n".join(out) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        md = self.render(path.parent).encode()
        return _atomic_write(path, lambda f: f.write(md))
