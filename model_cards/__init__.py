"""Card templates and the code that renders and checks them.

`model_cards` imports no other project package (ARCHITECTURE §2): callers hand it plain data (strings, numbers,
lists, dicts, `datasets.Features`) and get `huggingface_hub` cards or Markdown back.
"""

from model_cards.model_card import render_model_card
from model_cards.validate import CardValidationError, card_problems, check_card, validate_on_hub

__all__ = ["CardValidationError", "card_problems", "check_card", "render_model_card", "validate_on_hub"]
