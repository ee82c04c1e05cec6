"""A live plot of training: train and validation loss, redrawn in place in the notebook as steps come."""
from __future__ import annotations

import matplotlib.pyplot as plt


class LiveLossPlot:
    """Call update(record) with each training record; the figure below the cell redraws every
    `every` steps (and at each validation) through one IPython display handle."""

    def __init__(self, title: str = "training on tiny Shakespeare", every: int = 10):
        from IPython.display import display
        self.every, self.steps, self.losses, self.val_steps, self.val_losses = every, [], [], [], []
        self.fig, self.ax = plt.subplots(figsize=(6, 3))
        self.ax.set_title(title, fontsize=10)
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        (self.train_line,) = self.ax.plot([], [], lw=1, label="train (batch)")
        (self.val_line,) = self.ax.plot([], [], "o-", ms=4, label="validation")
        self.ax.legend(fontsize=8)
        self.handle = display(self.fig, display_id=True)
        plt.close(self.fig)  # shown through the handle only

    def update(self, record, model=None):
        self.steps.append(record["step"])
        self.losses.append(record["loss"])
        if record.get("val_loss") is not None:
            self.val_steps.append(record["step"])
            self.val_losses.append(record["val_loss"])
        if len(self.steps) % self.every == 0 or record.get("val_loss") is not None:
            self.redraw()

    def redraw(self):
        self.train_line.set_data(self.steps, self.losses)
        self.val_line.set_data(self.val_steps, self.val_losses)
        self.ax.relim()
        self.ax.autoscale_view()
        if self.handle is not None:
            self.handle.update(self.fig)
