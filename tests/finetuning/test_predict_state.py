"""State ``predict`` of :func:`cnncodes.finetune`: an error naming the fix when there are no
images to evaluate on. A random-init resnet18 model file (no training, no network)."""

from __future__ import annotations

import pytest
import torch

from cnncodes.backbones.weights import weights_sha256
from cnncodes.errors import OptionError
from cnncodes.finetuning.config import make_config
from cnncodes.finetuning.model_file import save_model_file
from cnncodes.finetuning.net import build_finetune_model
from cnncodes.finetuning.run import finetune


def test_state_predict_without_a_source_or_test_names_the_fix(tmp_path):
    torch.manual_seed(0)
    cfg = make_config(backbone="resnet18", weights="random", input_size=32)
    net, resolved, pp = build_finetune_model(cfg, ["a", "b"])
    model = tmp_path / "model.pt"
    save_model_file(net, model, config=cfg.to_dict(), family="resnet", base_weights=resolved.id,
                    base_weights_sha256=weights_sha256(resolved) or "",
                    preprocessing=pp.to_dict(), epoch=0, val_accuracy=None, command="test")
    with pytest.raises(OptionError, match=r"state 'predict' .* pass a source \(or test=...\)"):
        finetune(None, tmp_path / "run", state="predict", weights=str(model), num_workers=0)
    assert not (tmp_path / "run" / "report.json").exists()
