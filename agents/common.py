"""Small helpers shared by the agents."""

from __future__ import annotations


def render_items(items: list[dict], max_chars: int = 400) -> str:
    """One line per item, its id in brackets, text cut to max_chars.

    [{"id": "7", "text": "Twelve Monkeys (1995)..."}] -> '[7] Twelve Monkeys (1995)...'"""
    lines = []
    for it in items:
        text = " ".join(str(it["text"]).split())
        if len(text) > max_chars:
            text = text[: max_chars - 1].rstrip() + "…"
        lines.append(f"[{it['id']}] {text}")
    return "\n".join(lines)
