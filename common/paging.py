"""Page sizes of the list APIs, defined once: the registry's ListNodes and
the gateway's ``limit`` (which it passes on as a page size) accept pages of
1..PAGE_SIZE_MAX rows, as the protos document, and a request that names no
size gets PAGE_SIZE_DEFAULT."""

from __future__ import annotations

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1_000
