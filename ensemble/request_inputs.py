"""Optional text inputs of the Triton models (``filter``, ``filter_values``), read the same
way by ``recommender`` and ``similar_items``."""
from __future__ import annotations


def optional_text(tensor, name: str, error: type[Exception]) -> str | None:
    """The one string of an optional BYTES ``[1]`` input (``tensor`` is ``None`` when the
    request does not carry it); ``error`` with what is wrong otherwise."""
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise error(f"{name} must hold exactly one string, got {values.size}")
    value = values[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{name} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise error(f"{name} must be a string (BYTES), got {type(value).__name__}")
    return value
