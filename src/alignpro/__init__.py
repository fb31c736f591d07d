"""Align-Pro: prompt optimization for LLM alignment."""
