"""Request and response contracts of the Bria endpoints on fal.ai.

One definition serves both backends: :class:`~bria_dagster.client.backends.fal.FalBackend`
sends these models to fal, :class:`~bria_dagster.client.backends.local.LocalBackend`
runs them on the embedded engine. Validation happens here, before anything is
sent, so nothing that fal would reject is ever paid for.

Inputs (``image_url``, ``ref_image_url``) accept what a user has at hand: an
http(s)/s3/gs/data/file URL string, a :class:`pathlib.Path`, or raw ``bytes``.
Backends turn local inputs into what they need (a data URI or a fal storage
upload for fal; decoded pixels for the local engine).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import RequestValidationError

__all__ = [
    "ENDPOINTS",
    "EXPAND",
    "LIST_PRICES",
    "MAX_CANVAS_AREA",
    "MAX_SEED",
    "REMOVE",
    "REPLACE",
    "AspectRatio",
    "AspectRatioName",
    "BriaRequest",
    "BriaResponse",
    "EndpointSpec",
    "ExpandRequest",
    "ExpandResponse",
    "Image",
    "ImageInput",
    "PriceTable",
    "RemoveBackgroundRequest",
    "RemoveBackgroundResponse",
    "ReplaceBackgroundRequest",
    "ReplaceBackgroundResponse",
    "build_request",
    "endpoint_for",
    "input_fingerprint",
    "request_fingerprint",
]

MAX_SEED = 2_147_483_647
MAX_CANVAS_AREA = 5000 * 5000
URL_SCHEMES = frozenset({"http", "https", "s3", "gs", "data", "file"})


def _serialize_input(value: str | Path | bytes) -> str:
    """How an input appears in canonical JSON: URLs as-is, local data by content hash."""
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, Path):
        return value.resolve().as_uri()
    return value


def _validate_input(value: Any) -> str | Path | bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if not data:
            raise ValueError("image bytes are empty")
        return data
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("image URL is empty")
        scheme = urlsplit(text).scheme.lower()
        if scheme in URL_SCHEMES:
            return text
        if len(scheme) == 1:  # a Windows drive letter, not a URL scheme
            return Path(text)
        if scheme:
            raise ValueError(
                f"unsupported URL scheme {scheme!r}; use one of "
                f"{', '.join(sorted(URL_SCHEMES))}, a local path or bytes"
            )
        return Path(text)
    raise ValueError(f"expected a URL string, a pathlib.Path or bytes, got {type(value).__name__}")


ImageInput = Annotated[
    str | Path | bytes,
    PlainSerializer(_serialize_input, return_type=str, when_used="json"),
]
"""An image given as URL (http, https, s3, gs, data, file), local path, or bytes."""


class AspectRatio(StrEnum):
    R1_1 = "1:1"
    R2_3 = "2:3"
    R3_2 = "3:2"
    R3_4 = "3:4"
    R4_3 = "4:3"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R9_16 = "9:16"
    R16_9 = "16:9"

    @classmethod
    def _missing_(cls, value: object) -> AspectRatio:
        # Instead of "'4x5' is not a valid AspectRatio": the values to choose from.
        raise ValueError(f"aspect_ratio {value!r} is not one of {', '.join(cls)}")

    @property
    def ratio(self) -> float:
        w, h = self.value.split(":")
        return int(w) / int(h)


AspectRatioName = Literal[tuple(ratio.value for ratio in AspectRatio)]  # type: ignore[valid-type]
"""An aspect ratio as settings spell it: the :class:`AspectRatio` values, as a ``Literal``
(a JSON-schema ``enum`` that ``dg check yaml`` checks)."""


class Image(BaseModel):
    """fal's ``Image`` output object."""

    model_config = ConfigDict(extra="allow")

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    width: int | None = None
    height: int | None = None


class BriaRequest(BaseModel):
    """Base of the request models: strict fields, validated on construction."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    endpoint_id: ClassVar[str]

    image_url: ImageInput = Field(description="The input image: URL, local path or bytes.")
    sync_mode: bool = Field(
        default=False,
        description="Return outputs as data URIs (not kept in fal's request history).",
    )

    @field_validator("image_url", mode="before")
    @classmethod
    def _check_image(cls, value: Any) -> Any:
        return _validate_input(value)

    def arguments(self) -> dict[str, Any]:
        """The arguments for fal: JSON values, with the image inputs left as given.

        Backends resolve the inputs (URL, ``Path`` or ``bytes``) themselves.
        Defaults are included so that equivalent requests look identical.
        """
        return {**self.parameters(), **self.inputs()}

    def parameters(self) -> dict[str, Any]:
        """Every argument except the image inputs: what lineage records as parameters."""
        return {
            k: v
            for k, v in self.model_dump(mode="json", exclude_none=True).items()
            if k not in self.input_fields()
        }

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        return ("image_url",)

    def inputs(self) -> dict[str, str | Path | bytes]:
        return {
            name: value
            for name in self.input_fields()
            if (value := getattr(self, name)) not in (None, "")
        }

    def output_count(self) -> int:
        """How many images a successful call returns (what is billed for replace)."""
        return 1

    def estimated_cost_usd(self, prices: PriceTable | None = None) -> float:
        """What this request costs at ``prices`` (default: :data:`LIST_PRICES`)."""
        return (prices or LIST_PRICES).cost_usd(self)


class RemoveBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/remove``: cut the subject out, RGBA PNG out."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/remove"


class ReplaceBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/replace``: new background from a prompt or a reference image."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/replace"

    ref_image_url: ImageInput | None = Field(
        default=None, description="Reference image for the new background (not with prompt)."
    )
    prompt: str | None = Field(default=None, description="Text describing the new background.")
    negative_prompt: str = ""
    refine_prompt: bool = True
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    fast: bool = True
    num_images: int = Field(default=1, ge=1, le=4)

    @field_validator("ref_image_url", mode="before")
    @classmethod
    def _check_ref(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        return _validate_input(value)

    @field_validator("prompt", mode="before")
    @classmethod
    def _blank_prompt_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _exactly_one_background_source(self) -> ReplaceBackgroundRequest:
        has_ref = self.ref_image_url is not None
        has_prompt = self.prompt is not None
        if has_ref == has_prompt:
            raise ValueError(
                "give exactly one of ref_image_url or prompt "
                f"(got {'both' if has_ref else 'neither'})"
            )
        return self

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        return ("image_url", "ref_image_url")

    def output_count(self) -> int:
        return self.num_images


def _pair(name: str, value: Any, *, allow_negative: bool = False) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [a, b] of integers, got {value!r}")
    a, b = value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must hold integers, got {value!r}")
    if not allow_negative and (a <= 0 or b <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(a), int(b)


class ExpandRequest(BriaRequest):
    """``fal-ai/bria/expand``: grow the canvas and fill the new area."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/expand"

    canvas_size: tuple[int, int] = Field(
        description="[width, height] of the result; area under 5000x5000."
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="Target ratio; wins over canvas_size and the original's size/location.",
    )
    original_image_size: tuple[int, int] | None = None
    original_image_location: tuple[int, int] | None = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("canvas_size", "original_image_size", mode="before")
    @classmethod
    def _check_size(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        return _pair(info.field_name, value)

    @field_validator("original_image_location", mode="before")
    @classmethod
    def _check_location(cls, value: Any) -> Any:
        if value is None:
            return None
        return _pair("original_image_location", value, allow_negative=True)

    @model_validator(mode="after")
    def _check_geometry(self) -> ExpandRequest:
        w, h = self.canvas_size
        if w * h >= MAX_CANVAS_AREA:
            raise ValueError(
                f"canvas_size {w}x{h} has area {w * h}; it must be under 5000x5000 = "
                f"{MAX_CANVAS_AREA} pixels"
            )
        if (self.original_image_size is None) != (self.original_image_location is None):
            raise ValueError(
                "original_image_size and original_image_location go together: give both or neither"
            )
        return self


class RemoveBackgroundResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: Image

    @property
    def images(self) -> list[Image]:
        return [self.image]


class ReplaceBackgroundResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    images: list[Image]
    seed: int | None = None


class ExpandResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: Image
    seed: int | None = None

    @property
    def images(self) -> list[Image]:
        return [self.image]


BriaResponse = RemoveBackgroundResponse | ReplaceBackgroundResponse | ExpandResponse


_PRICES_AS_OF = "2026-11-30"
_REMOVE_PAGE = "fal.ai/docs/model-api-reference/image-generation-api/bria-background"
_EXPAND_PAGE = "fal.ai/models/fal-ai/bria/expand"


class PriceTable(BaseModel):
    """The USD prices that costs, estimates and budgets are computed from.

    The defaults are fal.ai's public list prices as read on 2026-11-30; prices change
    and enterprise contracts differ, so set your own (``BriaResource(prices=...)``).
    Where fal's pages disagreed (expand), the default is the endpoint's own listing,
    which is also the higher figure: a budget then never under-counts. Every record
    of a call keeps the unit price that applied (``unit_price_usd``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    remove_usd_per_call: float = Field(
        default=0.018,
        ge=0,
        description=f"fal-ai/bria/background/remove, per call. Default: {_REMOVE_PAGE} "
        f"('RMBG 2.0 ... at $0.018 per inference'), as of {_PRICES_AS_OF}.",
    )
    replace_usd_per_image: float = Field(
        default=0.023,
        ge=0,
        description="fal-ai/bria/background/replace, per output image (num_images). "
        f"Default: {_REMOVE_PAGE} ('Bria Background Replace ($0.023)'), as of "
        f"{_PRICES_AS_OF}.",
    )
    expand_usd_per_call: float = Field(
        default=0.04,
        ge=0,
        description=f"fal-ai/bria/expand, per call. Default: {_EXPAND_PAGE} ('Price: $0.04 "
        f"per generations'), as of {_PRICES_AS_OF}; the comparison on {_REMOVE_PAGE} says "
        "$0.023 per operation. The endpoint's own, higher listing is kept.",
    )
    source: str = Field(
        default=f"fal.ai list prices: {_REMOVE_PAGE} (remove, replace), {_EXPAND_PAGE} (expand)",
        description="Where these prices come from (a contract, a price page): for audits.",
    )
    as_of: str = Field(
        default=_PRICES_AS_OF, description="When these prices were read or agreed (ISO date)."
    )

    def unit_price_usd(self, request_or_id: BriaRequest | str) -> float:
        """The price of one unit (a call, or an output image for replace) of an endpoint."""
        spec = endpoint_for(request_or_id)
        return {
            "remove": self.remove_usd_per_call,
            "replace": self.replace_usd_per_image,
            "expand": self.expand_usd_per_call,
        }[spec.name]

    def cost_usd(self, request: BriaRequest) -> float:
        """What ``request`` costs when it succeeds: unit price x units."""
        spec = endpoint_for(request)
        units = request.output_count() if spec.price_unit == "image" else 1
        return round(self.unit_price_usd(request) * units, 6)


LIST_PRICES = PriceTable()
"""The default :class:`PriceTable`: fal.ai's public list prices (see its fields)."""


class EndpointSpec(BaseModel):
    """What bria-dagster knows about one endpoint: id, models, default list price.

    Costs are computed by a :class:`PriceTable` (``price_usd`` is the default
    table's figure, for reference); ``price_unit`` says what one unit is.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    endpoint_id: str
    name: Literal["remove", "replace", "expand"]
    request_model: type[BriaRequest]
    response_model: type[BaseModel]
    price_usd: float
    price_unit: Literal["call", "image"]

    def parse_response(self, payload: dict[str, Any]) -> BriaResponse:
        return self.response_model.model_validate(payload)  # type: ignore[return-value]


REMOVE = EndpointSpec(
    endpoint_id=RemoveBackgroundRequest.endpoint_id,
    name="remove",
    request_model=RemoveBackgroundRequest,
    response_model=RemoveBackgroundResponse,
    price_usd=LIST_PRICES.remove_usd_per_call,
    price_unit="call",
)
REPLACE = EndpointSpec(
    endpoint_id=ReplaceBackgroundRequest.endpoint_id,
    name="replace",
    request_model=ReplaceBackgroundRequest,
    response_model=ReplaceBackgroundResponse,
    price_usd=LIST_PRICES.replace_usd_per_image,
    price_unit="image",
)
EXPAND = EndpointSpec(
    endpoint_id=ExpandRequest.endpoint_id,
    name="expand",
    request_model=ExpandRequest,
    response_model=ExpandResponse,
    price_usd=LIST_PRICES.expand_usd_per_call,
    price_unit="call",
)

ENDPOINTS: dict[str, EndpointSpec] = {spec.endpoint_id: spec for spec in (REMOVE, REPLACE, EXPAND)}


def endpoint_for(request_or_id: BriaRequest | str) -> EndpointSpec:
    """The :class:`EndpointSpec` of a request, an endpoint id, or a short name."""
    key = request_or_id if isinstance(request_or_id, str) else request_or_id.endpoint_id
    if key in ENDPOINTS:
        return ENDPOINTS[key]
    for spec in ENDPOINTS.values():
        if spec.name == key:
            return spec
    raise RequestValidationError(
        f"unknown endpoint {key!r}; known: {', '.join(ENDPOINTS)} (or remove, replace, expand)"
    )


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _allowed_range(model: type[BaseModel], field: str) -> str | None:
    info = model.model_fields.get(field)
    if info is None:
        return None
    low = high = None
    for meta in info.metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    if low is None and high is None:
        return None
    return f"{'' if low is None else low}..{'' if high is None else high}"


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in _RANGE_ERRORS and (allowed := _allowed_range(model, field)):
            msg = f"{err.get('input')!r} is out of range; allowed {allowed}"
        elif err["type"] == "enum":
            msg = f"{err.get('input')!r} is not allowed; {msg.lower()}"
        parts.append(f"{field}: {msg}" if field else msg)
    endpoint = model.endpoint_id  # type: ignore[attr-defined]
    return f"invalid {endpoint} request: " + "; ".join(parts)


def build_request(endpoint: str, **arguments: Any) -> BriaRequest:
    """Validate ``arguments`` for ``endpoint`` (id or short name).

    Raises :class:`RequestValidationError` naming each bad field and the allowed
    range; nothing is sent anywhere.
    """
    spec = endpoint_for(endpoint)
    try:
        return spec.request_model(**arguments)
    except ValidationError as exc:
        raise RequestValidationError(_describe(exc, spec.request_model)) from None


def input_fingerprint(value: str | Path | bytes) -> str:
    """A stable identity of one input: sha256 of its bytes when local, else its URL.

    Remote URLs are identified by their text (fetching them to hash would cost a
    download per request); data URIs and local files by their content.
    """
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, Path):
        return "sha256:" + _file_sha256(value)
    if value.startswith("data:"):
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return "url:" + value


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def request_fingerprint(request: BriaRequest) -> str:
    """sha256 over endpoint, input identities and canonical parameters.

    Two requests with the same fingerprint would be billed for the same work;
    the runner sends only one of them, and the journal re-attaches to it.
    """
    inputs = {k: input_fingerprint(v) for k, v in request.inputs().items()}
    return fingerprint_of(request.endpoint_id, inputs, request.parameters())


def fingerprint_of(endpoint_id: str, input_ids: dict[str, str], parameters: dict[str, Any]) -> str:
    """The fingerprint from its parts: input identities as :func:`input_fingerprint` gives them.

    Lets a caller that knows an input's identity (its sha256) fingerprint a
    request without reading the input.
    """
    canonical = {"endpoint": endpoint_id, "inputs": input_ids, "parameters": parameters}
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
