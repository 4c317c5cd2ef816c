"""Synthetic demo tickets: the offline default data (scenes, rendering, exports, ticket layout)."""

from vlqc.demo.tickets import MISSIONS, generate

__all__ = ["MISSIONS", "generate"]
