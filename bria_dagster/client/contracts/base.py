"""What every endpoint contract is made of: the request and response bases, image inputs,
the list price, and :class:`EndpointContract`, the one declaration per endpoint.

An endpoint module (``remove.py``, ``replace.py``, ...) subclasses :class:`BriaRequest`
and :class:`ImageResponse` or :class:`ImagesResponse` (or :class:`BriaResponse`) and
declares a module-level ``CONTRACT``; the package finds it (see
:mod:`bria_dagster.client.contracts`). Validation happens in the request model,
before anything is sent, so nothing fal would reject is ever paid for.

Inputs (``image_url``, ``ref_image_url``) accept what a user has at hand: an
http(s)/s3/gs/data/file URL string, a :class:`pathlib.Path`, or raw ``bytes``.
Backends turn local inputs into what they need (a data URI or a fal storage
upload for fal; decoded pixels for the local engine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

__all__ = [
    "MAX_SEED",
    "BriaRequest",
    "BriaResponse",
    "EndpointContract",
    "Image",
    "ImageInput",
    "ImageResponse",
    "ImagesResponse",
    "ListPrice",
    "LocalInputs",
    "LocalRenderer",
    "OptionalImageInput",
    "OptionalText",
    "require_one_of",
    "validate_input",
]

MAX_SEED = 2_147_483_647
URL_SCHEMES = frozenset({"http", "https", "s3", "gs", "data", "file"})


def _serialize_input(value: str | Path | bytes) -> str:
    """How an input appears in canonical JSON: URLs as-is, local data by content hash."""
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, Path):
        return value.resolve().as_uri()
    return value


def validate_input(value: Any) -> str | Path | bytes:
    """An image input as the models keep it (a field validator of every image field)."""
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


def _optional_input(value: Any) -> str | Path | bytes | None:
    return None if value is None or value == "" else validate_input(value)


OptionalImageInput = Annotated[ImageInput | None, BeforeValidator(_optional_input)]
"""An :data:`ImageInput` that may be left out (``None`` or ``""``)."""


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


OptionalText = Annotated[str | None, BeforeValidator(_blank_is_none)]
"""A text that may be left out: a blank one (a catalog's empty cell) counts as ``None``."""


def require_one_of(request: BaseModel, first: str, second: str) -> None:
    """Refuse a request giving both or neither of the fields ``first`` and ``second``."""
    given = getattr(request, first) is not None
    if given == (getattr(request, second) is not None):
        raise ValueError(
            f"give exactly one of {first} or {second} (got {'both' if given else 'neither'})"
        )


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
        return validate_input(value)

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
        """How many images a successful call returns (what a per-image price counts)."""
        return 1


class BriaResponse(BaseModel):
    """Base of the response models: fal's JSON, extra fields kept."""

    model_config = ConfigDict(extra="allow")

    def output_images(self) -> list[Image]:
        """The output images, in order: what is downloaded, verified and recorded."""
        raise NotImplementedError

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        """The response fal would give for ``images`` (how the local engine answers)."""
        raise NotImplementedError

    @classmethod
    def _seed(cls, seed: int | None) -> dict[str, int | None]:
        # The engine's seed goes where the response declares one (fal returns it there).
        return {"seed": seed} if "seed" in cls.model_fields else {}


class ImageResponse(BriaResponse):
    """A response holding one ``image``."""

    image: Image

    def output_images(self) -> list[Image]:
        return [self.image]

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        return cls(image=images[0], **cls._seed(seed))


class ImagesResponse(BriaResponse):
    """A response holding a list of ``images``."""

    images: list[Image]

    def output_images(self) -> list[Image]:
        return self.images

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        return cls(images=images, **cls._seed(seed))


@dataclass(frozen=True, slots=True)
class ListPrice:
    """An endpoint's public list price: USD per unit, and where and when it was read."""

    usd: float
    unit: Literal["call", "image"]
    """``call``: one price per request; ``image``: per output image (``output_count``)."""
    source: str
    as_of: str

    @classmethod
    def per_call(cls, usd: float, *, source: str, as_of: str) -> ListPrice:
        """``usd`` per request, whatever it returns."""
        return cls(usd=usd, unit="call", source=source, as_of=as_of)

    @classmethod
    def per_image(cls, usd: float, *, source: str, as_of: str) -> ListPrice:
        """``usd`` per output image (a request's ``output_count``)."""
        return cls(usd=usd, unit="image", source=source, as_of=as_of)


@dataclass(frozen=True, slots=True)
class LocalInputs:
    """What the offline engine gets for one request."""

    images: dict[str, PILImage.Image]
    """The request's decoded input images, by field name (``image_url``, ...)."""
    seed: int
    """The request's seed, or one derived from the request (reproducible)."""
    cutout: Callable[[PILImage.Image], np.ndarray]
    """The backend's matting (its ONNX model when configured): an RGBA array."""
    max_pixels: int

    def subject(self) -> np.ndarray:
        """``image_url`` as an RGBA cutout: a real alpha channel is kept (the endpoint
        takes a photo or a cutout), anything else is matted."""
        import numpy as np

        image = self.images["image_url"]
        rgba = np.asarray(image) if image.mode == "RGBA" else None
        if rgba is None or int(rgba[..., 3].min()) == 255:
            rgba = self.cutout(image)
        return rgba

    def rgb(self, name: str) -> np.ndarray | None:
        """Input ``name`` (``ref_image_url``, ...) as an RGB array; ``None`` when not given."""
        import numpy as np

        image = self.images.get(name)
        return None if image is None else np.asarray(image.convert("RGB"))

    def on_scene(
        self, compose: Callable[..., list[np.ndarray]], **arguments: Any
    ) -> list[tuple[bytes, str]]:
        """The :meth:`subject` on generated scenes, encoded: ``compose`` is the engine
        function (``replace_background``, ``product_shots``); it gets the subject, the
        scene's ``reference`` image (``ref_image_url``, or ``None``), the seed and
        ``arguments``."""
        from ..images import encode_array

        scenes = compose(
            self.subject(), reference=self.rgb("ref_image_url"), seed=self.seed, **arguments
        )
        return [encode_array(pixels) for pixels in scenes]


LocalRenderer = Callable[[Any, LocalInputs], list[tuple[bytes, str]]]
"""``(request, inputs) -> [(image bytes, content type), ...]``: an endpoint on the engine."""


@dataclass(frozen=True)
class EndpointContract:
    """What bria-dagster knows about one endpoint: the one declaration per endpoint.

    ``request_model`` validates and carries the arguments (its ``endpoint_id`` is the
    endpoint's); ``response_model`` parses fal's answer and says which images it holds;
    ``list_price`` is the default of :class:`~bria_dagster.client.prices.PriceTable`;
    ``render_local`` runs the endpoint on the embedded engine (``None``: fal only).
    """

    name: str
    """The short name settings, usage keys and messages use (``remove``)."""
    request_model: type[BriaRequest]
    response_model: type[BriaResponse]
    list_price: ListPrice
    render_local: LocalRenderer | None = None

    @property
    def endpoint_id(self) -> str:
        return self.request_model.endpoint_id

    def parse_response(self, payload: dict[str, Any]) -> BriaResponse:
        return self.response_model.model_validate(payload)
