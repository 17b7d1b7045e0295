"""What the three Bria apps accept: prices, limits and fal's pydantic-style 422 details.

A request that breaks these rules is rejected at submit (or, with
``validate_at_submit=False``, accepted and then failed), as fal does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENDPOINT_PRICES", "JobFailed", "invalid", "schema_errors", "summary"]

ENDPOINT_PRICES: dict[str, float] = {
    "fal-ai/bria/background/remove": 0.018,  # per call
    "fal-ai/bria/background/replace": 0.023,  # per image
    "fal-ai/bria/expand": 0.04,  # per call
}
MAX_SEED = 2_147_483_647
MAX_CANVAS_AREA = 5000 * 5000
MAX_INPUT_PIXELS = 5000 * 5000
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9")


class JobFailed(Exception):
    """A job's failure as fal reports it: the result call's status, ``detail`` and type."""

    def __init__(self, status: int, detail: Any, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.message = message


def loc_error(field: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": kind}


def invalid(field: str, msg: str, kind: str) -> JobFailed:
    """A 422 failure of one input field (found while running the job)."""
    return JobFailed(422, [loc_error(field, msg, kind)], kind, f"{field}: {msg}")


def summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors)


def _check_int(args: dict[str, Any], name: str, low: int, high: int, errors: list) -> None:
    value = args.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        errors.append(loc_error(name, "Input should be a valid integer", "int_type"))
    elif value < low:
        errors.append(
            loc_error(name, f"Input should be greater than or equal to {low}", "greater_than_equal")
        )
    elif value > high:
        errors.append(
            loc_error(name, f"Input should be less than or equal to {high}", "less_than_equal")
        )


def _check_type(args: dict[str, Any], name: str, kind: type, errors: list) -> None:
    value = args.get(name)
    if value is None:
        return
    if kind is bool and not isinstance(value, bool):
        errors.append(loc_error(name, "Input should be a valid boolean", "bool_type"))
    elif kind is str and not isinstance(value, str):
        errors.append(loc_error(name, "Input should be a valid string", "string_type"))


def _check_pair(args: dict[str, Any], name: str, errors: list, *, required: bool = False) -> None:
    value = args.get(name)
    if value is None:
        if required:
            errors.append(loc_error(name, "Field required", "missing"))
        return
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        errors.append(loc_error(name, "Input should be a list of 2 integers", "list_type"))


def schema_errors(endpoint: str, args: Any) -> list[dict[str, Any]]:
    """Type, range and required-field errors, pydantic-style (what fal's 422 lists)."""
    if not isinstance(args, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors: list[dict[str, Any]] = []
    if "image_url" not in args or args["image_url"] is None:
        errors.append(loc_error("image_url", "Field required", "missing"))
    _check_type(args, "image_url", str, errors)
    _check_type(args, "sync_mode", bool, errors)
    if endpoint.endswith("/replace"):
        for name in ("ref_image_url", "prompt", "negative_prompt"):
            _check_type(args, name, str, errors)
        for name in ("refine_prompt", "fast"):
            _check_type(args, name, bool, errors)
        _check_int(args, "num_images", 1, 4, errors)
        _check_int(args, "seed", 0, MAX_SEED, errors)
    elif endpoint.endswith("/expand"):
        _check_pair(args, "canvas_size", errors, required=True)
        _check_pair(args, "original_image_size", errors)
        _check_pair(args, "original_image_location", errors)
        ratio = args.get("aspect_ratio")
        if ratio is not None and ratio not in ASPECT_RATIOS:
            errors.append(
                loc_error(
                    "aspect_ratio",
                    f"Input should be {', '.join(repr(r) for r in ASPECT_RATIOS)}",
                    "enum",
                )
            )
        for name in ("prompt", "negative_prompt"):
            _check_type(args, name, str, errors)
        _check_int(args, "seed", 0, MAX_SEED, errors)
    return errors
