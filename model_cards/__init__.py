"""Card templates and the code that renders them.

`model_cards` imports no other project package (ARCHITECTURE §2): callers hand it plain data (strings, numbers,
lists, dicts) and get Markdown back.
"""

from model_cards.model_card import ModelCardInfo, is_hub_id, model_card_metadata, render_model_card

__all__ = ["ModelCardInfo", "is_hub_id", "model_card_metadata", "render_model_card"]
