"""rlvr_world.eval.report: learning-curve and frame-grid PNGs, markdown tables, report.md."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rlvr_world.eval import Report, frame_grid, markdown_table, plot_curves
from rlvr_world.eval.report import HEADER_PX, PAD, grid_array

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)  # [H, W, 3 or 4] float32 in [0, 1]


def _metrics(n_train: int = 60) -> list[dict]:
    rows = [{"step": s, "kind": "train", "loss": 1.0 / (s + 1), "reward": None if s % 7 == 0 else s * 0.01}
            for s in range(n_train)]
    rows += [{"step": s, "kind": "eval", "loss": 0.5, "psnr": 20.0 + s} for s in range(0, n_train, 20)]
    rows.append({"step": n_train, "kind": "eval", "psnr": None})
    return rows


def test_plot_curves_png(tmp_path):
    keys = ["loss", "reward", "psnr", "never_logged"]  # 4 keys -> 2 x 3 grid of 4 x 3 inch cells at 100 dpi
    out = plot_curves(_metrics(), keys, tmp_path / "curves.png", title="run", kinds={"psnr": "eval"})
    assert out == tmp_path / "curves.png"
    img = _read_png(out)
    assert img.shape[:2] == (2 * 300, 3 * 400)
    assert img[..., :3].std() > 0  # something was drawn
    assert os.listdir(tmp_path) == ["curves.png"]


def test_plot_curves_single_empty_key(tmp_path):
    img = _read_png(plot_curves([], ["loss"], tmp_path / "c.png"))
    assert img.shape[:2] == (300, 400)
    with pytest.raises(ValueError):
        plot_curves([], [], tmp_path / "none.png")


def test_plot_curves_kinds_filter(tmp_path):
    # reading "loss" from eval rows only must give a different picture than from all rows
    rows = _metrics()
    a = _read_png(plot_curves(rows, ["loss"], tmp_path / "a.png", kinds={"loss": "eval"}))
    b = _read_png(plot_curves(rows, ["loss"], tmp_path / "b.png"))
    assert a.shape == b.shape and not np.array_equal(a, b)


def _frames(n=3, h=5, w=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_frame_grid_uint8_equals_float(tmp_path):
    u8 = {"context": _frames(seed=1), "prediction": _frames(seed=2)}
    f32 = {k: v.float() / 255 for k, v in u8.items()}
    f32["prediction"][0, 0, 0, 0] = 1.5  # clamped to 1 -> 255
    u8["prediction"][0, 0, 0, 0] = 255
    a = _read_png(frame_grid(u8, tmp_path / "a.png"))
    b = _read_png(frame_grid(f32, tmp_path / "b.png"))
    np.testing.assert_array_equal(a, b)
    # the PNG holds exactly grid_array's pixels
    np.testing.assert_array_equal(np.round(a[..., :3] * 255).astype(np.uint8), grid_array(u8))


@pytest.mark.parametrize("max_rows, scale", [(8, 2), (2, 1), (1, 3)])
def test_frame_grid_size(tmp_path, max_rows, scale):
    n, h, w = 3, 5, 4
    cols = {"a": _frames(n, h, w), "b": _frames(n, h, w, seed=3)}
    img = _read_png(frame_grid(cols, tmp_path / "g.png", max_rows=max_rows, scale=scale))
    rows = min(n, max_rows)
    assert img.shape[:2] == (HEADER_PX + PAD + rows * (h * scale + PAD), PAD + 2 * (w * scale + PAD))


def test_frame_grid_cells_and_diff():
    n, h, w, s = 2, 3, 4, 2
    gt, other = _frames(n, h, w, seed=4), _frames(n, h, w, seed=5)
    canvas = grid_array({"ground truth": gt, "prediction": gt.clone(), "other": other}, scale=s,
                        diff=("ground truth", "prediction"), titles=False)
    assert canvas.shape == (PAD + n * (h * s + PAD), PAD + 4 * (w * s + PAD), 3)

    def cell(i, j):
        y0, x0 = PAD + i * (h * s + PAD), PAD + j * (w * s + PAD)
        return canvas[y0:y0 + h * s, x0:x0 + w * s]

    for i in range(n):
        # column 2 is "other", upscaled by nearest neighbour
        expected = other[i].permute(1, 2, 0).numpy().repeat(s, 0).repeat(s, 1)
        np.testing.assert_array_equal(cell(i, 2), expected)
        assert not cell(i, 3).any()  # |difference| of identical frames is black
    # with different frames the difference column is |a - b| * 4, clamped
    canvas = grid_array({"a": gt, "b": other}, scale=1, diff=("a", "b"), titles=False)
    d = (gt.int() - other.int()).abs().mul(4).clamp(max=255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(canvas[PAD:PAD + h, PAD + 2 * (w + PAD):PAD + 2 * (w + PAD) + w], d)


def test_frame_grid_titles_drawn():
    cols = {"context": _frames(), "prediction": _frames(seed=6)}
    with_titles = grid_array(cols, scale=8)
    assert (with_titles[:HEADER_PX] < 128).any()  # dark title text on the white strip
    np.testing.assert_array_equal(with_titles[HEADER_PX:], grid_array(cols, scale=8, titles=False))


def test_frame_grid_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="'prediction'"):
        frame_grid({"ground truth": _frames(h=5), "prediction": _frames(h=6)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'gray'"):
        frame_grid({"gray": torch.zeros(2, 1, 5, 4)}, tmp_path / "x.png")
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def test_markdown_table():
    rows = [{"name": "a", "psnr": 21.123456, "n": 3}, {"name": "b|c", "psnr": None, "n": 4},
            {"name": "d", "psnr": np.float32(0.5)}]
    assert markdown_table(rows, ["name", "psnr", "n"]) == (
        "| name | psnr | n |\n"
        "| --- | --- | --- |\n"
        "| a | 21.1235 | 3 |\n"
        "| b\\|c | — | 4 |\n"
        "| d | 0.5000 | — |"
    )
    assert markdown_table([{"x": 1.0, "ok": True}], ["x", "ok"], floats="{:.1f}").splitlines()[-1] == "| 1.0 | True |"


def test_report_write(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "plots").mkdir()
    report = (Report("My run")
              .text("Some *text*.")
              .table([{"k": "psnr", "v": 25.0}], ["k", "v"])
              .image("plots/curves.png", "Learning curves")
              .image(out_dir / "plots" / "grid.png"))
    path = report.write(out_dir / "report.md")
    assert path == out_dir / "report.md"
    md = path.read_text()
    assert md.startswith("# My run\n")
    assert "Some *text*." in md
    assert "| k | v |\n| --- | --- |\n| psnr | 25.0000 |" in md
    assert "![Learning curves](plots/curves.png)" in md
    assert "![](plots/grid.png)" in md  # absolute path inside the directory made relative
    assert str(tmp_path) not in md
    assert sorted(os.listdir(out_dir)) == ["plots", "report.md"]  # no temp file left behind
    with pytest.raises(ValueError, match="outside"):
        Report("x").image(tmp_path / "elsewhere.png").write(out_dir / "r2.md")
    assert sorted(os.listdir(out_dir)) == ["plots", "report.md"]


def test_import_does_not_load_matplotlib():
    code = "import rlvr_world.eval, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
