"""Hub folders: a weight file published with the JSON files that describe it (timm, Hugging Face transformers).

timm and transformers publish a model as a folder (a hub repository): the weights in `model.safetensors` or
`pytorch_model.bin`, the architecture in `config.json`, and for transformers the preprocessing in
`preprocessor_config.json`. The input convention lives in those JSON files, not in the weights, so they are read
here, beside the weight file (JSON parsing only: `auto_map` / custom code entries are never imported or run).

- timm (`timm/models/_hub.py` save_for_hf): config.json holds `architecture` (e.g. "resnet50") and
  `pretrained_cfg` with `mean`, `std` (RGB order, pixels in 0..1), `input_size`, `interpolation`, ...
- transformers (`models/resnet/configuration_resnet.py`): config.json with `model_type: "resnet"`, `layer_type`,
  `depths`, `hidden_sizes`, `embedding_size`, `hidden_act`, `downsample_in_first_stage`, `downsample_in_bottleneck`;
  preprocessor_config.json (an image processor's: `image_mean`, `image_std`, `do_normalize`, `do_rescale`,
  `rescale_factor`) says what pixels the network saw.

Which convention that makes is convention.py's; the names are names.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchdet.weights.files import read_json

CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Names the two libraries give the weight file of a hub folder (save_pretrained / timm's push_to_hf_hub).
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class HubConfig:
    """The JSON files beside a weight file.

    Attributes:
        kind: "timm" (config.json with `pretrained_cfg` or `architecture`), "transformers" (`model_type: resnet`), or
            None when there is no config.json or it describes neither.
        config: config.json's content ({} when absent).
        preprocessor: preprocessor_config.json's content ({} when absent).
        config_path: config.json's path, for messages (None when absent).
    """

    kind: str | None = None
    config: dict = field(default_factory=dict)
    preprocessor: dict = field(default_factory=dict)
    config_path: Path | None = None

    @property
    def preprocessor_path(self) -> Path | None:
        return self.config_path.with_name(PREPROCESSOR_CONFIG) if self.config_path else None


def read_hub_config(weights: Path) -> HubConfig:
    """The timm / transformers JSON files in the folder of `weights`, if any.

    Raises:
        CheckpointError: a config.json or preprocessor_config.json that is not a JSON object.
    """
    config_path = weights.with_name(CONFIG)
    if not config_path.is_file():
        return HubConfig()
    config = read_json(config_path)
    preprocessor_path = weights.with_name(PREPROCESSOR_CONFIG)
    preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else {}
    if config.get("model_type") == "resnet":  # transformers' ResNetConfig.model_type; other models are not ResNets
        kind = "transformers"
    elif "pretrained_cfg" in config or "architecture" in config:
        kind = "timm"
    else:
        kind = None
    return HubConfig(kind, config, preprocessor, config_path)
