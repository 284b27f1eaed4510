"""The ImageRef contract: what ``product.metadata.media`` holds after a migration.

``product.metadata.media = {"version": 1, "refs": [ImageRef, ...]}``, refs
ordered by ``rank``; every other key of ``product.metadata`` is left alone.
The store's dashboard (TypeScript) validates against
``safeops/schemas/image-ref.schema.json``, generated from these models:

    uv run python -m safeops.core.image_ref > safeops/schemas/image-ref.schema.json

A test fails when the committed file and the models disagree. Field names are
camelCase on purpose: they are the JSON contract, not Python style.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

SCHEMA_ID = "urn:safeops:schemas:image-ref:1"
SCHEMA_FILE = "image-ref.schema.json"
MEDIA_VERSION = 1

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
KEY_PATTERN = rf"^products/[^/]+/[0-9]{{8}}T[0-9]{{6}}Z-{UUID4}(\.[a-z0-9]{{1,10}})?$"
UTC_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"
KEY_RE = re.compile(KEY_PATTERN)


def _require_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() != UTC.utcoffset(None):
        raise ValueError("createdAt must be a UTC timestamp (ending in Z)")
    return moment.astimezone(UTC)


def utc_iso(moment: datetime) -> str:
    """``2026-11-22T00:48:31Z``: seconds precision, always UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


UtcTimestamp = Annotated[
    datetime,
    AfterValidator(_require_utc),
    PlainSerializer(utc_iso, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": UTC_PATTERN,
            "description": "UTC ISO 8601, e.g. 2026-11-22T00:48:31Z.",
        }
    ),
]


class ImageRef(BaseModel):
    """One product image stored in the media bucket under a timestamp+UUID key."""

    model_config = ConfigDict(
        extra="forbid", title="ImageRef", field_title_generator=lambda name, _info: name
    )

    key: str = Field(
        pattern=KEY_PATTERN,
        description=(
            "Object key: products/<product_id>/<UTC yyyymmddTHHMMSSZ>-<uuid4><ext>, "
            "extension lower-case. Never reused, never overwritten."
        ),
    )
    bucket: str = Field(min_length=3, max_length=63, description="Bucket holding the object.")
    url: str = Field(
        min_length=1,
        description=(
            "Public URL: the configured file URL + '/' + the key, each path segment "
            "percent-encoded."
        ),
    )
    rank: int = Field(ge=0, description="Display order; refs are sorted by it.")
    contentType: str = Field(min_length=1, description="MIME type of the object.")
    size: int = Field(ge=0, description="Object size in bytes.")
    etag: str = Field(min_length=1, description="The object's ETag, without quotes.")
    alt: str | None = Field(description="Alt text (from the source image's metadata.alt).")
    sourceImageId: str | None = Field(
        description=("Medusa image id this ref was migrated from; null for a new upload.")
    )
    sourceUrl: str | None = Field(
        description=("The source image's URL (migrations) or null (uploads).")
    )
    createdAt: UtcTimestamp = Field(description="When the object was written (UTC).")


class MediaRefs(BaseModel):
    """``product.metadata.media``: versioned list of ImageRefs ordered by rank."""

    model_config = ConfigDict(
        extra="forbid", title="MediaRefs", field_title_generator=lambda name, _info: name
    )

    version: Literal[1] = Field(description="Format version of metadata.media.")
    refs: list[ImageRef] = Field(description="The product's images, ordered by rank.")

    def sorted(self) -> MediaRefs:
        refs = sorted(self.refs, key=lambda r: (r.rank, r.createdAt, r.key))
        return MediaRefs(version=MEDIA_VERSION, refs=refs)

    def document(self) -> dict[str, Any]:
        """The JSON stored in ``product.metadata.media``."""
        return self.model_dump(mode="json")


def public_url(file_url: str, key: str) -> str:
    """Inverse of ``tasks.media.objects.key_for_url``: encode each segment."""
    return file_url.rstrip("/") + "/" + "/".join(quote(part, safe="") for part in key.split("/"))


def json_schema() -> dict[str, Any]:
    """The ImageRef schema at the root, MediaRefs under ``$defs`` (``#/$defs/MediaRefs``)."""
    ref_schema = ImageRef.model_json_schema(mode="serialization")
    media = MediaRefs.model_json_schema(mode="serialization")
    media.pop("$defs", None)
    media["properties"]["refs"]["items"] = {"$ref": "#"}
    media["description"] = (
        'product.metadata.media: {"version": 1, "refs": [ImageRef]}, '
        "refs ordered by rank. Other metadata keys are not part of it."
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **ref_schema,
        "$defs": {"MediaRefs": media},
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def committed_schema_text() -> str:
    return files("safeops.schemas").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


if __name__ == "__main__":
    print(schema_text(), end="")
