"""Saving and loading trained models without Lightning."""

from __future__ import annotations

from pathlib import Path

import torch

from molconf.models.transformer import ConformerTransformer


def read_model_file(path: str | Path, map_location: str = "cpu") -> tuple[dict | None, dict | None, dict]:
    """``(config, state_dict, meta)`` of a weights file or of a molconf Lightning checkpoint.

    Shared by every model loader; ``config``/``state_dict`` are None when the file has none.
    Raises ``ValueError`` naming the file if it is not a readable torch file holding a dict.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated / corrupted / not a torch file
        raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a molconf model file")
    if "hyper_parameters" in ckpt:  # Lightning checkpoint of a molconf LightningModule
        config = ckpt.get("molconf_model_config") or ckpt["hyper_parameters"].get("model_config")
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        meta = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
                "train_seconds": ckpt.get("molconf_train_seconds")}
        return config, state, meta
    return ckpt.get("config"), ckpt.get("state_dict"), ckpt.get("meta", {})  # written by a save_* function


def build_from_file(cls, path: str | Path, config: dict, state: dict):
    """``cls(**config)`` with ``state`` loaded, in eval mode; a mismatch names the file."""
    model = cls(**config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the stored configuration ({err})") from None
    return model.eval()


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[ConformerTransformer, dict]:
    """Rebuild a :class:`ConformerTransformer` from a Lightning checkpoint or a weights file.

    Returns the model in eval mode and the file's metadata (``{}`` if none).
    Raises ``ValueError`` naming the file if it is not a molconf model.
    """
    config, state, meta = read_model_file(path, map_location)
    if config is None or state is None:
        raise ValueError(f"{path}: no model configuration or weights in the file")
    return build_from_file(ConformerTransformer, path, config, state), meta


def save_model(model: ConformerTransformer, path: str | Path, meta: dict | None = None,
               half: bool = False) -> Path:
    """Write configuration + weights (+ metadata); ``half`` stores floats as float16
    (``load_state_dict`` casts them back to the model's float32 parameters)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": state, "meta": meta or {}}, path)
    return path
