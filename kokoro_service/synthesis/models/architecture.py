"""Kokoro-82M as published: the repository it comes from and its configuration.

A module of its own so that the loaders (sources), the importer (onnx_import) and the
checkpoint builder share it without importing one another.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro.model import KModel

REPO_ID = "hexgrad/Kokoro-82M"

# Kokoro-82M v1.0 as published (config.json of hexgrad/Kokoro-82M, without the vocabulary).
# Everything the graph can show is derived from it and compared with these values; the rest
# (training-only dropout, unused dim_in/n_mels/max_conv_dim, multispeaker) is not observable
# in an inference graph and is taken from here.
KOKORO_82M_CONFIG: dict[str, Any] = {
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    },
    "dim_in": 64,
    "dropout": 0.2,
    "hidden_dim": 512,
    "max_conv_dim": 512,
    "max_dur": 50,
    "multispeaker": True,
    "n_layer": 3,
    "n_mels": 80,
    "n_token": 178,
    "style_dim": 128,
    "text_encoder_kernel_size": 5,
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
}


def new_kmodel(config: dict[str, Any] | str, model: str) -> KModel:
    """``kokoro.KModel`` from local files, without the two warnings its constructor gives,
    which are about kokoro's code, not about this deployment, and would otherwise head
    every start-up's log:

    * torch's LSTM says dropout needs more than one layer: Kokoro's config sets dropout
      for LSTMs of one layer, and at inference dropout is off anyway;
    * torch's ``weight_norm`` deprecation: kokoro applies the old form, and the engine
      folds weight norm into plain weights once loaded.
    """
    from kokoro.model import KModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
        warnings.filterwarnings("ignore", ".*weight_norm.* is deprecated", FutureWarning)
        return KModel(repo_id=REPO_ID, config=config, model=model)
