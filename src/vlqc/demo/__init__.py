"""Synthetic demo tickets: the offline default data (scenes, rendering, exports, ticket layout)."""

from vlqc.demo.tickets import MISSION_RULES, MISSIONS, RRU_MISSIONS, generate, judge

__all__ = ["MISSION_RULES", "MISSIONS", "RRU_MISSIONS", "generate", "judge"]
