"""``python -m moe_ref``: print the activation-dtype decision table (generated from its data)."""

from .selector import format_decision_table

print(format_decision_table())
