"""The data formats of ETSI GS QKD 014 V1.1.1 (clause 6) as msgspec Structs.

Field names are the spec's. Requests forbid unknown fields (a misspelt field is a 400, not
silently ignored); extension objects are free-form JSON objects as the spec allows.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

SaeId = Annotated[str, Meta(min_length=1, max_length=128)]
KeyIdText = Annotated[str, Meta(min_length=1, max_length=64)]


class Status(Struct, omit_defaults=True):
    """Get status response (6.1)."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int
    status_extension: dict[str, Any] | None = None


class KeyRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Get key request body (6.2), POST enc_keys."""

    number: Annotated[int, Meta(ge=1)] | None = None
    size: Annotated[int, Meta(ge=1)] | None = None
    additional_slave_SAE_IDs: Annotated[list[SaeId], Meta(description=(
        "Further slave SAEs that get the same keys (key multicast), at most max_SAE_ID_count,"
        " all attached to the slave SAE's KME; each may fetch each key once with dec_keys"))] = []
    extension_mandatory: list[dict[str, Any]] = []
    extension_optional: list[dict[str, Any]] = []


class Key(Struct, omit_defaults=True):
    """One key of a key container (6.3): ``key`` is base64 (RFC 4648)."""

    key_ID: str
    key: str
    key_ID_extension: dict[str, Any] | None = None
    key_extension: dict[str, Any] | None = None


class KeyContainer(Struct, omit_defaults=True):
    """Get key / get key with key IDs response (6.3)."""

    keys: list[Key]
    key_container_extension: dict[str, Any] | None = None


class KeyIdItem(Struct, forbid_unknown_fields=True, omit_defaults=True):
    key_ID: KeyIdText
    key_ID_extension: dict[str, Any] | None = None


class KeyIds(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Get key with key IDs request body (6.4), POST dec_keys."""

    key_IDs: Annotated[list[KeyIdItem], Meta(min_length=1)]
    key_IDs_extension: dict[str, Any] | None = None


class Error(Struct):
    """Error response (6.5): ``details`` is a list of objects."""

    message: str
    details: list[dict[str, Any]] = []


encoder = msgspec.json.Encoder()
