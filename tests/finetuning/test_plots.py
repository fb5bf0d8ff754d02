"""``curves.png``: per epoch with two or more epochs, per optimiser step for a run of one epoch,
and a figure that says there is nothing to plot when there is no curve to draw."""

from __future__ import annotations

from PIL import Image

from cnncodes.finetuning.plots import bin_steps, curve_kind, curves_figure, plot_curves


def _epoch(e: int, **extra):
    return {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "val_loss": 2.1 / e,
            "val_acc": 0.25 * e, **extra}


def test_bin_steps_keeps_short_runs_and_averages_long_ones():
    assert bin_steps([1.0, 2.0, 3.0], most=5) == [1.0, 2.0, 3.0]
    assert bin_steps(list(range(10)), most=5) == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert len(bin_steps([0.0] * 1001)) == 50


def test_one_epoch_is_plotted_per_step_not_as_single_dots(tmp_path):
    losses = [2.3, 2.2, 2.0, 1.9, 1.7, 1.6]
    rec = _epoch(1, steps=6, step_loss=losses, step_acc=[0.1, 0.1, 0.2, 0.3, 0.3, 0.4])
    assert curve_kind([rec]) == "steps"
    fig = curves_figure([rec])
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xlabel() == "optimiser step (1 epoch = 6 steps)"
    train = loss_ax.lines[0]
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6] and list(train.get_ydata()) == losses
    assert loss_ax.get_xlim()[1] > 5  # a step axis, not 0.96..1.04 around epoch 1
    assert [ln.get_label() for ln in acc_ax.lines] == ["train (per step)",
                                                       "validation (end of epoch)"]
    # binned steps: each point is plotted at the last step of its bin
    binned = curves_figure([_epoch(1, steps=100, step_loss=[1.0] * 50, step_acc=[0.5] * 50)])
    assert binned.axes[0].lines[0].get_xdata()[-1] == 100
    assert binned.axes[0].lines[0].get_label() == "train (mean of 2 steps)"
    out = plot_curves([rec], tmp_path / "curves.png")
    with Image.open(out) as im:
        assert im.size[0] > 300


def test_no_curve_says_there_is_nothing_to_plot():
    old = _epoch(1)  # a history written before step values were recorded, or a single step
    assert curve_kind([old]) == curve_kind([_epoch(1, step_loss=[1.0])]) == "none"
    fig = curves_figure([old])
    (ax,) = fig.axes
    text = ax.texts[0].get_text()
    assert text.startswith("nothing to plot: a learning curve needs 2 or more epochs")
    assert "epoch 1: train loss 2.0000, train accuracy 0.3000" in text and not ax.lines


def test_several_epochs_are_plotted_per_epoch_with_whole_epoch_ticks():
    fig = curves_figure([_epoch(1), _epoch(2), _epoch(3)])
    loss_ax, _ = fig.axes
    assert loss_ax.get_xlabel() == "epoch" and list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]
    fig.canvas.draw()
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
