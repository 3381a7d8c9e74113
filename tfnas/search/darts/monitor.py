"""What a search shows in TensorBoard and keeps on disk while it runs.

Per step: losses and accuracies of both splits and the learning rates. Per epoch: the same averages, the
mean entropy of each alpha group's softmax (a collapsing search drops fast), a heat map of each alpha
matrix (edges x operations; with PC-DARTS's edge normalisation also of the edge weights), the cells that
finalisation would pick now and how many skip connections and parameter-free operations they keep. The
alpha history is also appended to `alpha_history.jsonl`, one line per epoch, for plotting without
TensorBoard.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from tfnas import draw, files, rundir
from tfnas.alphas import group_weights
from tfnas.files import write_atomic
from tfnas.search import darts
from tfnas.train.loop import EpochCallback


def entropy(weights: np.ndarray) -> float:
    """Mean entropy (nats) of the rows of a softmax matrix."""
    return float(np.mean(-np.sum(weights * np.log(np.clip(weights, 1e-12, 1.0)), axis=-1)))


def alpha_heatmap(weights: np.ndarray, primitives: list[str], title: str) -> Image.Image:
    """An [edges x operations] matrix as a picture: darker = larger softmax weight, values printed."""
    cell_w, cell_h, left, top = 84, 20, 60, 46
    rows, cols = weights.shape
    image = Image.new("RGB", (left + cols * cell_w + 10, top + rows * cell_h + 10), "white")
    pen = ImageDraw.Draw(image)
    pen.text((left, 4), title, fill="black")
    for c, name in enumerate(primitives):
        pen.text((left + c * cell_w + 2, 24), name[:13], fill="black")
    top_value = float(weights.max()) or 1.0
    for r in range(rows):
        pen.text((4, top + r * cell_h + 4), f"edge {r}", fill="black")
        for c in range(cols):
            v = float(weights[r, c])
            shade = int(255 - 200 * v / top_value)
            box = (left + c * cell_w, top + r * cell_h, left + (c + 1) * cell_w - 1, top + (r + 1) * cell_h - 1)
            pen.rectangle(box, fill=(shade, shade, 255))
            pen.text((box[0] + 4, box[1] + 4), f"{v:.3f}", fill="black" if shade > 120 else "white")
    return image


class SearchMonitor(EpochCallback):
    """TensorBoard summaries and the alpha history of a DARTS search."""

    def __init__(self, run_dir: str | os.PathLike, writer, net, supernet_desc, edges_per_node: int,
                 max_skip_connect: int = 0, log_every_steps: int = 10):
        self.run_dir = files.path(run_dir)
        self.net, self.desc, self.k, self.max_skip = net, supernet_desc, edges_per_node, max_skip_connect
        self.writer = writer
        self.log_every = max(1, log_every_steps)

    def alphas(self) -> dict[str, np.ndarray]:
        return {g: v.numpy() for g, v in self.net.alpha_vars.items()}

    def on_step_end(self, step: int, logs: dict) -> None:
        if step % self.log_every:
            return
        with self.writer.as_default(step=step):
            for k, v in logs.items():
                tf.summary.scalar(f"step/{k}", v)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        alphas = self.alphas()
        candidates = darts.candidate_groups(self.desc)
        with self.writer.as_default(step=epoch + 1):
            for k, v in logs.items():
                tf.summary.scalar(f"epoch/{k}", v)
            for g, a in alphas.items():
                spec = self.desc.alpha_groups[g]
                w = group_weights(spec, a)
                if g in candidates:
                    tf.summary.scalar(f"alpha_entropy/{g}", entropy(w))
                kind = "softmax" if g in candidates else "softmax over each node's edges"
                image = alpha_heatmap(w, list(spec.primitives), f"{g} alphas ({kind}), epoch {epoch + 1}")
                tf.summary.image(f"alphas/{g}", draw.to_tensor_image(image))
            final = darts.finalize(self.desc, alphas, self.k, self.max_skip)
            tf.summary.image("cells/finalised", draw.to_tensor_image(draw.draw_cells(final)))
            for name, count in darts.counts(final).items():  # a collapse onto skips shows as these rising
                tf.summary.scalar(f"cells/{name}", count)
        self.writer.flush()
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                  "alphas": {g: a.tolist() for g, a in alphas.items()}}
        # A run resumed after a crash may redo an epoch: keep one line per epoch.
        path = self.run_dir / rundir.ALPHA_HISTORY
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["epoch"] < record["epoch"]]
        write_atomic(path, "".join(line + "\n" for line in kept + [json.dumps(record)]))
