"""A loss and a conditioner written outside the packages, selected in YAML by class_path."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import yaml
from PIL import Image

from framework.lightning.cli import main
from tests.framework.test_cli import FAST, write_config

PLUGIN = textwrap.dedent('''
    """A user's own plugins, in a module of their own."""
    import torch

    from conditioners import Conditioner
    from losses import EditLoss

    CALLS = {"loss": 0, "conditioner": 0}


    class LatentL1(EditLoss):
        """L1 distance to the inverted input everywhere: an extra loss of the user's."""

        def forward(self, y_t, *, x_t, g_t, mask, t):
            CALLS["loss"] += 1
            return (y_t - x_t).abs().sum()


    class DimText(Conditioner):
        """Scales the text embeddings of whatever ran before it."""

        def __init__(self, factor: float = 0.5):
            super().__init__()
            self.factor = factor

        def encode(self, side, backbone):
            return torch.full((1,), self.factor)

        def apply(self, inputs, latents, t, encoding, progress):
            CALLS["conditioner"] += 1
            inputs.encoder_hidden_states = inputs.encoder_hidden_states * encoding[:, None, None]
''')


def test_user_loss_and_conditioner_by_class_path(tmp_path, tiny_dirs, manifest):
    (tmp_path / "my_plugins.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp_path))
    try:
        base = write_config(tmp_path / "base.yaml", tiny_dirs, manifest, tmp_path / "base")
        main(["fit", "--config", str(base), *FAST, "--data.limit", "1"])
        config = yaml.safe_load(base.read_text())
        args = config["model"]["init_args"]
        args["output_dir"] = str(tmp_path / "plugins")
        args["conditioners"].append({"class_path": "my_plugins.DimText", "init_args": {"factor": 0.25}})
        args["losses"] = [{"class_path": "losses.MaskedMSEPreservation"}, {"class_path": "losses.CosineGuidance"},
                          {"class_path": "my_plugins.LatentL1", "init_args": {"weight": 0.01}}]
        (tmp_path / "plugins.yaml").write_text(yaml.safe_dump(config))
        main(["fit", "--config", str(tmp_path / "plugins.yaml"), *FAST, "--data.limit", "1"])
        import my_plugins

        # guidance decode 4 ITO steps at k = 1, final decode 3 (ito.first_step: skip, where y_t = x_t) at the
        # default k = 2: the extra loss ran at each
        assert my_plugins.CALLS["loss"] == 4 + 3 * 2
        assert my_plugins.CALLS["conditioner"] > 0
        summary = json.loads((tmp_path / "plugins" / "summary.json").read_text())
        assert "my_plugins.LatentL1" in [loss["class"] for loss in summary["parameters"]["losses"]]
        assert "my_plugins.DimText" in [c["class"] for c in summary["parameters"]["conditioners"]]
        a = np.asarray(Image.open(tmp_path / "base" / "text" / "edit.png"), dtype=float)
        b = np.asarray(Image.open(tmp_path / "plugins" / "text" / "edit.png"), dtype=float)
        assert np.abs(a - b).mean() > 1.0  # the plugins changed the edit
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_plugins", None)
