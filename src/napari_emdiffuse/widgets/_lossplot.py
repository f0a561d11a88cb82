"""The fine-tune widget's live plot: :class:`LossHistory` (what the events say: the model) and
:class:`LossPlot` (how it is drawn: the view), plus the ETA text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossHistory", "LossPlot", "eta_text", "to_canvas"]


@dataclass
class LossHistory:
    """What the live plot shows, as events arrive: training loss per iteration, validation
    loss when the engine reports one, and validation PSNR (the engine's validation metric)."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    psnr: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    base_psnr: float | None = None  # the base model's validation PSNR
    base_margin: float = 0.0  # the gain over it that replaces the base's weights

    def add(self, event: dict[str, Any]) -> bool:
        """Record an event from the training process; True if the plot changed."""
        stage = event.get("stage")
        loss = event.get("loss")
        metrics = event.get("metrics") or {}
        if stage == "training" and loss is not None and math.isfinite(loss):
            self.train.append((int(event.get("done", len(self.train) + 1)), float(loss)))
            return True
        if stage != "validation":
            return False
        if event.get("base"):
            psnr = metrics.get("psnr")
            self.base_psnr = float(psnr) if psnr is not None and math.isfinite(psnr) else None
            self.base_margin = float(event.get("base_margin") or 0.0)
            return self.base_psnr is not None
        self.metrics = dict(metrics)
        it = int(event.get("done") or (self.train[-1][0] if self.train else 0))
        changed = False
        value = loss if loss is not None else metrics.get("loss", metrics.get("val_loss"))
        if value is not None and math.isfinite(value):
            self.val.append((it, float(value)))
            changed = True
        if "psnr" in metrics and math.isfinite(metrics["psnr"]):
            self.psnr.append((it, float(metrics["psnr"])))
            changed = True
        return changed

    def clear(self) -> None:
        self.train.clear()
        self.val.clear()
        self.psnr.clear()
        self.metrics = {}
        self.base_psnr = None
        self.base_margin = 0.0

    @property
    def to_beat(self) -> float | None:
        """The validation PSNR a checkpoint must exceed to replace the base's weights."""
        return None if self.base_psnr is None else self.base_psnr + self.base_margin

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) of the losses (train and validation); None when there are none."""
        return _bounds(self.train + self.val, self.train + self.val + self.psnr)

    def psnr_bounds(self) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) for the PSNR axis, sharing the iteration axis with the losses."""
        pts = self.psnr + ([(self.psnr[0][0] if self.psnr else 0, self.to_beat)] if self.to_beat is not None else [])
        return _bounds(pts, self.train + self.val + self.psnr)

    def summary(self) -> str:
        """One line: last train loss, last validation loss and metrics."""
        parts = []
        if self.train:
            parts.append(f"iter {self.train[-1][0]}: loss {self.train[-1][1]:.4g}")
        if self.val:
            parts.append(f"val loss {self.val[-1][1]:.4g}")
        if "psnr" in self.metrics:
            base = f" (base {self.base_psnr:.2f})" if self.base_psnr is not None else ""
            if self.base_psnr is not None and self.base_margin != 0:
                base = f" (base {self.base_psnr:.2f}, to beat {self.to_beat:.2f})"
            parts.append(f"val PSNR {self.metrics['psnr']:.2f} dB{base}")
        elif self.base_psnr is not None:
            parts.append(f"base model: val PSNR {self.base_psnr:.2f} dB")
        if "ssim" in self.metrics:
            parts.append(f"SSIM {self.metrics['ssim']:.3f}")
        return ", ".join(parts)


def _bounds(
    points: list[tuple[int, float]], x_points: list[tuple[int, float]]
) -> tuple[float, float, float, float] | None:
    if not points:
        return None
    x0, x1 = min(p[0] for p in x_points), max(p[0] for p in x_points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    return float(x0), float(x1), float(y0), float(y1)


def eta_text(done: int, total: int, elapsed: float) -> str:
    """'ETA m:ss' from the iterations done so far (empty until there is a rate)."""
    if done < 1 or total <= done or elapsed <= 0:
        return ""
    left = elapsed / done * (total - done)
    return f"ETA {int(left // 60)}:{int(left % 60):02d}"


def to_canvas(
    points: list[tuple[int, float]],
    bounds: tuple[float, float, float, float],
    rect: tuple[float, float, float, float],
) -> list[tuple[float, float]]:
    """Map (iteration, value) points into a pixel rectangle (left, top, width, height); y up."""
    x0, x1, y0, y1 = bounds
    left, top, width, height = rect
    return [
        (left + (x - x0) / (x1 - x0) * width, top + height - (y - y0) / (y1 - y0) * height) for x, y in points
    ]


# ----------------------------------------------------------------------------------------------
# Qt


class LossPlot(QWidget):
    """A small live plot: training loss (blue line, left axis), validation loss (orange
    line) and validation PSNR (green dots, right axis, dB).

    QPainter only: no plotting library needed.
    """

    TRAIN = QColor(70, 150, 230)
    VAL = QColor(255, 150, 40)
    PSNR = QColor(90, 200, 110)

    def __init__(self, history: LossHistory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.setToolTip(
            "Training loss (blue), validation loss (orange), validation PSNR in dB (green, right axis); "
            "dashed: the base model's PSNR plus the margin a checkpoint must beat"
        )

    def _series(self, p: QPainter, pts: list[tuple[float, float]], color: QColor, *, line: bool, dots: bool) -> None:
        p.setPen(QPen(color, 1.5))
        if line and len(pts) > 1:
            p.drawPolyline(QPolygonF([QPointF(x, y) for x, y in pts]))
        if dots:
            p.setBrush(color)
            for x, y in pts:
                p.drawEllipse(QPointF(x, y), 2.5, 2.5)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fg = self.palette().windowText().color()
        w, h = self.width(), self.height()
        left, top, right, bottom = 46.0, 8.0, 40.0, 34.0
        rect = (left, top, max(1.0, w - left - right), max(1.0, h - top - bottom))
        box = QRectF(*rect)
        p.setPen(QPen(fg, 1))
        p.drawRect(box)
        hist = self.history
        loss_b, psnr_b = hist.bounds(), hist.psnr_bounds()
        if loss_b is None and psnr_b is None:
            p.drawText(box, Qt.AlignCenter, "loss appears here while training")
            p.end()
            return
        xb = loss_b or psnr_b
        p.drawText(QRectF(left, top + rect[3] + 2, 60, 14), Qt.AlignLeft, f"{xb[0]:g}")
        p.drawText(QRectF(left + rect[2] - 80, top + rect[3] + 2, 80, 14), Qt.AlignRight, f"iter {xb[1]:g}")
        if loss_b is not None:
            p.drawText(QRectF(0, top - 6, left - 4, 14), Qt.AlignRight, f"{loss_b[3]:.3g}")
            p.drawText(QRectF(0, top + rect[3] - 8, left - 4, 14), Qt.AlignRight, f"{loss_b[2]:.3g}")
            self._series(p, to_canvas(hist.train, loss_b, rect), self.TRAIN, line=True, dots=len(hist.train) == 1)
            self._series(p, to_canvas(hist.val, loss_b, rect), self.VAL, line=True, dots=True)
        if psnr_b is not None:
            p.setPen(QPen(self.PSNR, 1))
            p.drawText(QRectF(w - right + 3, top - 6, right - 3, 14), Qt.AlignLeft, f"{psnr_b[3]:.3g}")
            p.drawText(QRectF(w - right + 3, top + rect[3] - 8, right - 3, 14), Qt.AlignLeft, f"{psnr_b[2]:.3g}")
            self._series(p, to_canvas(hist.psnr, psnr_b, rect), self.PSNR, line=True, dots=True)
            if hist.to_beat is not None:  # dashed: the base model's PSNR + margin, the line to beat
                (_, y0), = to_canvas([(psnr_b[0], hist.to_beat)], psnr_b, rect)
                p.setPen(QPen(self.PSNR, 1, Qt.DashLine))
                p.drawLine(QPointF(rect[0], y0), QPointF(rect[0] + rect[2], y0))
        # legend
        x = left
        for text, color in (("train loss", self.TRAIN), ("val loss", self.VAL), ("val PSNR (dB)", self.PSNR)):
            if text == "val loss" and not hist.val:
                continue
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(x, h - 8), QPointF(x + 12, h - 8))
            p.setPen(QPen(fg, 1))
            p.drawText(QRectF(x + 15, h - 15, 90, 14), Qt.AlignLeft, text)
            x += 20 + p.fontMetrics().horizontalAdvance(text)
        p.end()
