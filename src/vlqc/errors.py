"""Error types shared by every stage.

`SampleError` is the one error a single input item raises: it carries a stable
reason code (written to failure files) and names the offending file.
"""

from __future__ import annotations


class VlqcError(Exception):
    """Base class for errors the pipeline reports to users."""


class SampleError(VlqcError):
    """One input item is bad; `code` is a stable, machine-readable reason."""

    def __init__(self, code: str, message: str, path: str | None = None):
        self.code = code
        self.message = message
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message} [{code}]")

    def __reduce__(self):
        # Rebuild from the real fields when a worker process sends it back.
        return (type(self), (self.code, self.message, self.path))


class SchemaError(VlqcError):
    """A record or document violates its JSON Schema."""
