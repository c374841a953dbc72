"""Saving and loading trained models without Lightning."""

from __future__ import annotations

from pathlib import Path

import torch

from molconf.models.transformer import ConformerTransformer


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[ConformerTransformer, dict]:
    """Rebuild a :class:`ConformerTransformer` from a Lightning checkpoint or a weights file.

    Returns the model in eval mode and the file's metadata (``{}`` if none).
    Raises ``ValueError`` naming the file if it is not a molconf model.
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
    if "hyper_parameters" in ckpt:  # Lightning checkpoint of molconf.lightning.ConformerModule
        config = ckpt.get("molconf_model_config") or ckpt["hyper_parameters"].get("model_config")
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        meta = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
                "train_seconds": ckpt.get("molconf_train_seconds")}
    else:  # weights file written by save_model
        config, state, meta = ckpt.get("config"), ckpt.get("state_dict"), ckpt.get("meta", {})
    if config is None or state is None:
        raise ValueError(f"{path}: no model configuration or weights in the file")
    model = ConformerTransformer(**config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the stored configuration ({err})") from None
    return model.eval(), meta


def save_model(model: ConformerTransformer, path: str | Path, meta: dict | None = None,
               half: bool = False) -> Path:
    """Write configuration + weights (+ metadata); ``half`` stores floats as float16
    (``load_state_dict`` casts them back to the model's float32 parameters)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": state, "meta": meta or {}}, path)
    return path
