"""Saving and loading trained models without Lightning.

Every model file is read by :func:`load_torch_file`: ``torch.load(..., weights_only=True)``,
so a file can hold tensors and plain Python data (dicts, lists, numbers, strings) but cannot
run code when it is loaded, and a file that is not such a torch file is refused with a
``ValueError`` naming it.

Weights shipped in the package (``molconf/weights/<stem>.pt``) are checked against the
SHA-256 their card (``<stem>.md``, beside them) records on a line of the form::

    - **sha256**: `<64 lower-case hex digits>` (of `<stem>.pt`; checked whenever it is loaded)

The same check applies to any weights file whose card has such a line (e.g. a copy of a
shipped model). A shipped file whose card has no such line is refused too. The hash of a file
is computed once per process (cached by path, modification time and size). :func:`save_model`
and :func:`write_card_sha256` keep the line up to date when weights are written.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from molconf.data.cache import file_sha256 as hash_file
from molconf.models.transformer import ConformerTransformer

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # shipped with the package
SHA256_LINE = re.compile(r"^- \*\*sha256\*\*: `([0-9a-f]{64})`", re.MULTILINE)


def card_path(weights: str | Path) -> Path:
    """The card of a weights file: ``<stem>.md`` beside it."""
    return Path(weights).with_suffix(".md")


def card_sha256(weights: str | Path) -> str | None:
    """The SHA-256 the weights file's card records, or None (no card, or no sha256 line)."""
    card = card_path(weights)
    if not card.is_file():
        return None
    m = SHA256_LINE.search(card.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def sha256_line(weights: str | Path, digest: str | None = None) -> str:
    """The card line recording a weights file's SHA-256 (hashing the file unless given)."""
    digest = digest or file_sha256(weights)
    return f"- **sha256**: `{digest}` (of `{Path(weights).name}`; checked whenever it is loaded)"


def with_sha256_line(text: str, weights: str | Path) -> str:
    """Card text with its sha256 line replaced by (or, if it has none, ending with) the file's."""
    line = sha256_line(weights)
    if re.search(r"^- \*\*sha256\*\*:", text, re.MULTILINE):
        return re.sub(r"^- \*\*sha256\*\*:.*$", lambda _: line, text, count=1, flags=re.MULTILINE)
    return text.rstrip("\n") + "\n" + line + "\n"


def write_card_sha256(weights: str | Path, create: bool = False) -> Path | None:
    """Record a weights file's SHA-256 in its card (replacing the old line). A missing card is
    written (holding only the line) if ``create``, else left missing (returns None)."""
    card = card_path(weights)
    if not card.is_file():
        if not create:
            return None
        text = f"# Card: `{Path(weights).stem}`\n\n"
    else:
        text = card.read_text(encoding="utf-8")
    card.write_text(with_sha256_line(text, weights), encoding="utf-8")
    return card


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, hex; cached per process by (path, modification time, size)."""
    path = Path(path).resolve()
    st = path.stat()
    return _sha256_of_version(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, mtime_ns: int, size: int) -> str:
    return hash_file(Path(path))


def is_shipped(path: str | Path) -> bool:
    """Whether a file lies in the package's own weights folder."""
    return Path(path).resolve().parent == WEIGHTS_DIR


def verify_weights_file(path: str | Path) -> None:
    """Check a weights file against the SHA-256 in its card, if its card has one; a shipped file
    (in the package's weights folder) must have one. Raises ``ValueError`` naming the file."""
    path = Path(path)
    expected = card_sha256(path)
    if expected is None:
        if is_shipped(path):
            raise ValueError(f"{path}: shipped weights whose card {card_path(path).name} records no sha256 "
                             "line, so the file cannot be checked; the installation is damaged (reinstall molconf)")
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path}: the file is damaged: its sha256 is {actual}, its card {card_path(path).name} "
                         f"expects {expected} (reinstall molconf, or re-download the file; weights replaced on purpose need "
                         "their hash recorded: molconf.models.io.write_card_sha256)")


def load_torch_file(path: str | Path, map_location: str = "cpu", what: str = "model file"):
    """``torch.load`` of a user-given file with ``weights_only=True`` (no code runs), after the
    card's SHA-256 check (:func:`verify_weights_file`). Raises ``FileNotFoundError`` if missing
    and ``ValueError`` naming the file if it is damaged, not a torch file, or holds objects
    other than tensors and plain data (e.g. a pickle that would run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    verify_weights_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated / corrupted / not a torch file / disallowed pickle content
        # first sentence only: torch's own text goes on to suggest weights_only=False, which
        # would run whatever code the file holds
        msg = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        raise ValueError(f"{path}: not a readable {what}: it is damaged, not a torch file, or holds objects "
                         f"other than tensors and plain data, which are refused for safety "
                         f"({type(err).__name__}: {msg})") from None


def read_model_file(path: str | Path, map_location: str = "cpu") -> tuple[dict | None, dict | None, dict]:
    """``(config, state_dict, meta)`` of a weights file or of a molconf Lightning checkpoint.

    Shared by every model loader; ``config``/``state_dict`` are None when the file has none.
    Raises ``ValueError`` naming the file if it is not a readable torch file holding a dict
    (:func:`load_torch_file`), or if it is shipped weights that fail their card's SHA-256.
    """
    path = Path(path)
    ckpt = load_torch_file(path, map_location)
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
    write_card_sha256(path, create=is_shipped(path))  # a card beside it records the new hash
    return path
