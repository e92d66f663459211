"""Recipes inside Markdown: model cards and Hub discussion comments show them as fenced YAML blocks."""

from __future__ import annotations

import re

YAML_BLOCK = re.compile(r"```ya?ml[^\n]*\n(.*?)```", re.DOTALL)


def yaml_blocks(text: str) -> list[str]:
    """The contents of every ```yaml (or ```yml) block of `text`, in order."""
    return YAML_BLOCK.findall(text)
